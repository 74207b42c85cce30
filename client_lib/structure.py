"""Nested inputs and outputs of a model <-> a flat list of tensors and a spec to rebuild them.

What a model takes or returns may be any nesting of tuples (named ones and torch's structseqs
included), lists, dicts (``OrderedDict`` and ``transformers``' ``ModelOutput`` included),
dataclasses, objects holding tensors in their attributes (a ``transformers`` ``DynamicCache``),
types registered with ``torch.utils._pytree``, ``None`` and other constants. ``flatten`` walks
it once and returns its tensors in order and a spec; ``unflatten`` builds the same structure
around other tensors (those the daemon computed). Constants are kept as they were; an object
is rebuilt as a shallow copy of itself with its tensor-holding attributes replaced. The spec
never crosses the socket: it lives in the client, next to the module it came from.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

MAX_DEPTH = 64

# spec nodes: ("T", i) the i-th tensor; ("C", value) a constant; ("seq", kind, type, items);
# ("map", type, keys, items); ("dc", template, names, items); ("obj", template, names, items);
# ("tree", type, context, items)


class StructureError(ValueError):
    """A structure that cannot be flattened (names where in it and why)."""


def _is_tensor(x) -> bool:
    import torch
    return isinstance(x, torch.Tensor)


def _holds_tensor(x, depth: int = 0, seen=None) -> bool:
    """Whether any tensor is reachable inside ``x`` through the nodes ``flatten`` walks."""
    if _is_tensor(x):
        return True
    if depth > MAX_DEPTH or x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return False
    seen = seen if seen is not None else set()
    if id(x) in seen:
        return False
    seen.add(id(x))
    if isinstance(x, (tuple, list)):
        return any(_holds_tensor(v, depth + 1, seen) for v in x)
    if isinstance(x, dict):
        return any(_holds_tensor(v, depth + 1, seen) for v in x.values())
    if _is_module(x):
        return False
    d = getattr(x, "__dict__", None)
    if isinstance(d, dict):
        return any(_holds_tensor(v, depth + 1, seen) for v in d.values())
    return False


def _is_module(x) -> bool:
    import torch
    return isinstance(x, torch.nn.Module)


def flatten(obj) -> tuple[list, Any]:
    """-> (tensors in order, spec). Raises StructureError naming the path of what it cannot
    walk."""
    leaves: list = []
    return leaves, _flat(obj, leaves, "", 0, set())


def _flat(x, leaves: list, path: str, depth: int, stack: set):
    if _is_tensor(x):
        leaves.append(x)
        return ("T", len(leaves) - 1)
    if not _holds_tensor(x):
        return ("C", x)
    if depth > MAX_DEPTH:
        raise StructureError(f"{path or 'the value'} is nested deeper than {MAX_DEPTH} levels")
    if id(x) in stack:
        raise StructureError(f"{path or 'the value'} refers to itself")
    stack = stack | {id(x)}
    if isinstance(x, (tuple, list)):
        items = [_flat(v, leaves, f"{path}[{i}]", depth + 1, stack) for i, v in enumerate(x)]
        if isinstance(x, tuple) and hasattr(type(x), "_fields"):
            kind = "namedtuple"
        elif isinstance(x, tuple) and hasattr(type(x), "n_fields"):
            kind = "structseq"
        else:
            kind = "tuple" if isinstance(x, tuple) else "list"
        return ("seq", kind, type(x), items)
    if isinstance(x, dict):
        keys = list(x.keys())
        items = [_flat(x[k], leaves, f"{path}[{k!r}]", depth + 1, stack) for k in keys]
        return ("map", type(x), keys, items)
    tree = _pytree_node(type(x))
    if tree is not None:
        children, context = tree.flatten_fn(x)
        items = [_flat(v, leaves, f"{path}<{i}>", depth + 1, stack)
                 for i, v in enumerate(children)]
        return ("tree", type(x), context, items)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        names = [f.name for f in dataclasses.fields(x) if _holds_tensor(getattr(x, f.name))]
        return ("dc", _template(x, names), names,
                [_flat(getattr(x, n), leaves, f"{path}.{n}", depth + 1, stack) for n in names])
    d = getattr(x, "__dict__", None)
    if isinstance(d, dict):
        names = [n for n, v in d.items() if _holds_tensor(v)]
        return ("obj", _template(x, names), names,
                [_flat(d[n], leaves, f"{path}.{n}", depth + 1, stack) for n in names])
    raise StructureError(f"{path or 'the value'} is a {type(x).__name__} holding tensors that "
                         "gpusched cannot take apart: return tuples, lists, dicts or "
                         "dataclasses of tensors")


def _pytree_node(t):
    try:
        from torch.utils import _pytree
    except ImportError:   # pragma: no cover - torch always has it
        return None
    return _pytree.SUPPORTED_NODES.get(t)


def _template(x, names: list[str]):
    """A shallow copy of ``x`` whose tensor-holding attributes are None: what is rebuilt
    around new tensors (so the spec does not keep the example run's tensors alive)."""
    try:
        t = copy.copy(x)
    except Exception as e:
        raise StructureError(f"a {type(x).__name__} cannot be copied ({e}): return its "
                             "tensors in a tuple or dict instead") from None
    for n in names:
        object.__setattr__(t, n, None)
    return t


def unflatten(spec, tensors: list):
    """The structure of ``spec`` around ``tensors`` (indexed as at ``flatten``)."""
    kind = spec[0]
    if kind == "T":
        return tensors[spec[1]]
    if kind == "C":
        return spec[1]
    if kind == "seq":
        _, sk, typ, items = spec
        vals = [unflatten(s, tensors) for s in items]
        if sk == "namedtuple":
            return typ(*vals)
        if sk == "structseq":
            return typ(vals)
        if sk == "list":
            return vals if typ is list else _rebuild_seq(typ, vals)
        return tuple(vals) if typ is tuple else _rebuild_seq(typ, vals)
    if kind == "map":
        _, typ, keys, items = spec
        vals = {k: unflatten(s, tensors) for k, s in zip(keys, items)}
        if typ is dict:
            return vals
        if dataclasses.is_dataclass(typ):     # transformers' ModelOutput: fields as keywords
            return typ(**vals)
        try:
            return typ(vals)
        except TypeError:
            out = typ.__new__(typ)
            dict.update(out, vals)
            return out
    if kind == "tree":
        _, typ, context, items = spec
        return _pytree_node(typ).unflatten_fn([unflatten(s, tensors) for s in items], context)
    _, template, names, items = spec     # "dc" / "obj"
    out = copy.copy(template)
    for n, s in zip(names, items):
        object.__setattr__(out, n, unflatten(s, tensors))
    return out


def _rebuild_seq(typ, vals):
    try:
        return typ(vals)
    except TypeError:
        return tuple(vals) if issubclass(typ, tuple) else list(vals)


def signature(spec, tensors: list) -> tuple:
    """A hashable key of a call: the structure, its constants and each tensor's dtype and
    shape. Two calls with the same key run the same captured graph."""
    return (_skey(spec), tuple((str(t.dtype).removeprefix("torch."), tuple(t.shape))
                           for t in tensors))


def _skey(spec):
    kind = spec[0]
    if kind == "T":
        return "T"
    if kind == "C":
        return ("C", _ckey(spec[1], 0))
    if kind == "seq":
        return ("seq", spec[1], spec[2].__qualname__, tuple(_skey(s) for s in spec[3]))
    if kind == "map":
        return ("map", spec[1].__qualname__, tuple(map(repr, spec[2])),
                tuple(_skey(s) for s in spec[3]))
    if kind == "tree":
        return ("tree", spec[1].__qualname__, repr(spec[2]), tuple(_skey(s) for s in spec[3]))
    return (kind, type(spec[1]).__qualname__, tuple(spec[2]), tuple(_skey(s) for s in spec[3]))


def _ckey(v, depth: int):
    """A constant's part of a signature: by value where it is plain data, else by identity
    (the same object: the same call)."""
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return (type(v).__name__, v)
    if depth < MAX_DEPTH and isinstance(v, (tuple, list)):
        return (type(v).__name__, tuple(_ckey(e, depth + 1) for e in v))
    if depth < MAX_DEPTH and isinstance(v, dict):
        return (type(v).__name__, tuple((repr(k), _ckey(e, depth + 1)) for k, e in v.items()))
    try:
        import torch
        if isinstance(v, (torch.dtype, torch.device)):
            return (type(v).__name__, str(v))
    except ImportError:   # pragma: no cover
        pass
    return ("id", id(v))


def describe(sig: tuple) -> str:
    """A signature's tensors as the user would write them: ``float32[1, 3, 224, 224]``."""
    return ", ".join(f"{dt}{list(shape)}" for dt, shape in sig[1]) or "no tensors"
