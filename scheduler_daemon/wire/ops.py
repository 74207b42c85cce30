"""Which aten operators the daemon runs, as rules both sides apply to torch's own schemas.

Not a list of allowed ops: the daemon runs every operator of torch's dispatcher registry in the
``aten`` namespace except those these rules refuse, so a new torch version needs no new list.
The rules read an operator's schema (argument types and names, return types) and tags, given
here as plain strings so that this module needs no torch; ``refusal`` returns why an operator
is refused, or None. Refused, and why:

- an argument of type ``Storage`` (``set_.source_Storage``): it views raw storage, so a tenant
  could alias memory the quota does not see; ``set``/``set_``/``set_data`` of any overload
  re-point a tensor at another storage likewise;
- an argument of type ``Stream`` (``record_stream``): CUDA stream state is the daemon's;
- a ``str`` argument named ``filename`` (``from_file``, ``save``): it reaches the filesystem;
- ``_print``: it writes to the daemon's output; ``pin_memory``/``_pin_memory``: page-locked
  host memory is outside any quota;
- no tensor argument and no tensor result (``_cufft_set_plan_cache_max_size``): it can only
  change process-wide state;
- tagged ``nondeterministic_seeded`` (random ops: ``rand``, ``normal``, ``bernoulli``, ...): the
  daemon's generator is not the client's, so results would differ silently. The same ops with
  their randomness switched off by an argument (``dropout(train=False)``,
  ``scaled_dot_product_attention(dropout_p=0)``) run: ``seeded_is_off`` decides per call.

Allocations that would return uninitialised memory (another tenant's freed data) are run and
then zero-filled: ``empty*``, ``new_empty*``, ``resize_``/``resize_as_`` (``ZERO_FILL``).
Ops whose output shape depends on data (tags ``dynamic_output_shape``,
``data_dependent_output``) and those returning a Python value run as sync points.
"""
from __future__ import annotations

REFUSED_TYPES = {"Storage": "it views raw storage, outside the tenant's quota",
                 "Stream": "CUDA stream state belongs to the daemon"}
REFUSED_NAMES = {"set": "it re-points a tensor at another storage",
                 "set_": "it re-points a tensor at another storage",
                 "set_data": "it re-points a tensor at another storage",
                 "_print": "it writes to the daemon's output",
                 "pin_memory": "page-locked host memory is outside any quota",
                 "_pin_memory": "page-locked host memory is outside any quota"}
FILE_ARGS = frozenset({"filename", "path", "file"})
SEEDED_TAG = "nondeterministic_seeded"
DATA_DEPENDENT_TAGS = frozenset({"dynamic_output_shape", "data_dependent_output"})
# run, then zero the outputs (empty*) or the storage they grew into (resize*)
ZERO_FILL = frozenset({"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty",
                       "new_empty_strided", "resize_", "resize_as_", "resize", "resize_as"})
# arguments whose value switches a seeded op's randomness off
SEEDED_OFF = {"train": False, "dropout_p": 0.0, "p": 0.0, "dropout": 0.0}
# beyond the tags: ops that answer a Python value
SYNC_NAMES = frozenset({"_local_scalar_dense", "is_nonzero", "equal", "item"})


def refusal(namespace: str, name: str, arg_types: list[str], arg_names: list[str],
            return_types: list[str]) -> str | None:
    """Why the operator ``namespace::name`` is refused, or None (see the module docstring)."""
    if namespace != "aten":
        return f"namespace {namespace!r}: the daemon runs aten operators only"
    if name in REFUSED_NAMES:
        return REFUSED_NAMES[name]
    for t, n in zip(arg_types, arg_names):
        for bad, why in REFUSED_TYPES.items():
            if bad in t:
                return why
        if "str" in t and n in FILE_ARGS:
            return "it reaches the filesystem"
    if not any("Tensor" in t for t in arg_types + return_types):
        return "it only changes process-wide state"
    return None


def seeded_is_off(arg_names: list[str], values: dict) -> bool:
    """A random op whose call switches its randomness off (``values``: argument name -> value
    as passed, missing where defaulted)."""
    return any(n in values and values[n] == off for n, off in SEEDED_OFF.items()
               if n in arg_names)


TENSOR_RETURNS = frozenset({"Tensor", "List[Tensor]", "Optional[Tensor]"})


def is_sync(name: str, return_types: list[str], tags: set[str]) -> bool:
    """Whether the op must run at a sync point (its result is data the client needs now)."""
    return (name in SYNC_NAMES or bool(DATA_DEPENDENT_TAGS & tags)
            or not all(r in TENSOR_RETURNS for r in return_types))


class Facts:
    """What the rules read of one operator (an ``OpOverload``, read by attribute: this module
    imports no torch)."""

    __slots__ = ("namespace", "name", "overload", "arg_types", "arg_names", "defaults",
                 "return_types", "tags")

    def __init__(self, op):
        schema = op._schema
        self.namespace, self.name, self.overload = op.namespace, op._opname, op._overloadname
        self.arg_types = [str(a.type) for a in schema.arguments]
        self.arg_names = [a.name for a in schema.arguments]
        self.defaults = {a.name: a.default_value for a in schema.arguments
                         if a.default_value is not None}
        self.return_types = [str(r.type) for r in schema.returns]
        self.tags = {t.name for t in op.tags}

    @property
    def full_name(self) -> str:
        return f"{self.namespace}::{self.name}.{self.overload}"

    def refusal(self) -> str | None:
        return refusal(self.namespace, self.name, self.arg_types, self.arg_names,
                       self.return_types)

    @property
    def seeded(self) -> bool:
        return SEEDED_TAG in self.tags

    @property
    def sync(self) -> bool:
        return is_sync(self.name, self.return_types, self.tags)

    def values(self, args, kwargs) -> dict:
        """Argument name -> value of one call, defaults filled in."""
        out = dict(self.defaults)
        out.update(zip(self.arg_names, args))
        out.update(kwargs)
        return out

    def randomness_off(self, args, kwargs) -> bool:
        """A seeded op whose call switches its randomness off."""
        return seeded_is_off(self.arg_names, self.values(args, kwargs))


# -- the built-in kernel ops of a registered kernel list (KernelSpec.op) -----------------------
# ``NAME`` or ``NAME:ARG,ARG``: what the torch backend runs for such a kernel
# (devices/torch_ops.py builds them). One rule for every backend: a kernel list the simulated
# GPU accepts is one a torch daemon runs, and the reverse (devices/op_policy.check_kernel_ops).
def _number(lo: float | None = None, hi: float | None = None, what: str = "") -> object:
    def check(a: str) -> str | None:
        try:
            v = float(a)
        except ValueError:
            return f"{a!r} is not a number"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"{what or a} must be in {lo:g}..{hi:g}"
        return None
    return check


def _whole(lo: int, hi: int, what: str) -> object:
    def check(a: str) -> str | None:
        try:
            v = int(a)
        except ValueError:
            return f"{what} {a!r} is not a whole number"
        return None if lo <= v <= hi else f"{what} must be in {lo}..{hi}"
    return check


def _text(a: str) -> str | None:
    return None


# name -> the checks of its arguments, first the required ones, then (after None) optional ones
KERNEL_OPS: dict[str, tuple] = {
    "": (), "identity": (), "relu": (), "tanh": (), "sigmoid": (), "softmax": (),
    "scale": (_number(),), "add": (_number(),),
    "linear": (_whole(1, 1 << 16, "linear: out features"), None,
               _whole(-(1 << 63), (1 << 63) - 1, "linear: seed")),
    "sleep": (_number(0, 1e7, "sleep: the duration (us, up to 10 s)"),),
    "fail": (None, _text),
}


def kernel_op_refusal(spec: str) -> str | None:
    """Why the kernel op ``spec`` cannot run on the torch backend (so on no backend), or None."""
    name, _, rest = spec.partition(":")
    rules = KERNEL_OPS.get(name)
    if rules is None:
        return (f"unknown op {name!r}; built-in ops: "
                f"{', '.join(sorted(o for o in KERNEL_OPS if o))}")
    args = [a for a in rest.split(",") if a] if rest else []
    required = list(rules[:rules.index(None)] if None in rules else rules)
    optional = list(rules[rules.index(None) + 1:] if None in rules else ())
    if not len(required) <= len(args) <= len(required) + len(optional):
        n = (f"{len(required)}" if not optional
             else f"{len(required)} to {len(required) + len(optional)}")
        return f"bad arguments for op {spec!r}: it takes {n} argument(s), got {len(args)}"
    for check, a in zip(required + optional, args):
        why = check(a)
        if why:
            return f"bad arguments for op {spec!r}: {why}"
    return None
