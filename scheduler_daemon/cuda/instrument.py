"""Paella's block-level progress counter as an opt-in source transformation.

Each ``extern "C" __global__ void NAME(PARAMS) { BODY }`` becomes

    static __device__ __forceinline__ void __gpusched_body_NAME(PARAMS) { BODY }
    extern "C" __global__ void NAME(PARAMS, unsigned long long* __gpusched_progress) {
        __shared__ unsigned int __gpusched_left;
        if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0)
            __gpusched_left = blockDim.x * blockDim.y * blockDim.z;
        __syncthreads();                                   // prologue: every thread, uniform
        __gpusched_body_NAME(args...);
        __threadfence();                                   // epilogue: no barrier
        if (atomicSub(&__gpusched_left, 1u) == 1u) {       // the last thread out of the block
            __threadfence_system(); atomicAdd(__gpusched_progress, 1ULL); } }

so every block, however its threads leave the body (early ``return`` included), bumps the
counter once, when its last thread is done. The epilogue has no barrier: a kernel that returns
early for some threads (``if (i >= n) return;``) and then calls ``__syncthreads()`` has its
returned threads leave the kernel as before instead of waiting at a second barrier (threads of a
block at two different barriers is undefined: a hang, or the block counted before its other
threads are done). The only barrier is the prologue's, before the body, where every thread is.
Each thread fences its writes before it counts itself out, and the last one fences at system
scope before the atomic, so a host that reads N from the counter sees N blocks' writes.
The driver backend passes a pointer into host-mapped pinned memory as the extra last argument,
so the host reads how many blocks have finished while the kernel runs. The body function keeps
the original lines (its header is rewritten in place and the wrapper is one line after its
closing brace), so compiler messages keep their line numbers.

Handled: kernels declared ``extern "C" __global__ void`` (or inside an ``extern "C" { }``
block), also inside namespaces; ``__launch_bounds__``/``__maxnreg__``/``__cluster_dims__``
(moved to the wrapper); parameter lists with templates (commas inside ``<>``), pointers,
``const``/``volatile``/``__restrict__``, arrays, defaults and unnamed parameters (they are given
names); ``__grid_constant__`` (kept on the wrapper only); comments and string literals anywhere.

Refused, with a ``ValueError`` naming the kernel: a ``__global__`` function without C linkage
(templates, overloads: the wrapper must keep the name the launch uses), variadic parameters or
packs, function-pointer parameters, forward declarations of a kernel, kernels made by macros
(a ``__global__`` inside a ``#define``), and source that already uses the ``__gpusched`` prefix.

Not seen (this is no C++ parser): a kernel whose header a macro expands to; blocks whose threads
leave through ``asm("exit;")`` or ``__trap()`` are not counted (the count then stays below the
grid, which is what a host watching progress should see).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from scheduler_daemon.cuda.lex import mask

PROGRESS_PARAM = "__gpusched_progress"
BODY_PREFIX = "__gpusched_body_"
LEFT = "__gpusched_left"   # threads of the block still in the body (shared)

_TOKEN = re.compile(r"[A-Za-z_]\w*|\S")
_EXTERN_C = re.compile(r'extern\s*"C"\s*\{?')
_GRID_CONSTANT = re.compile(r"\b__grid_constant__\b")
_ARRAY_TAIL = re.compile(r"(\s*\[[^\]]*\])+\s*$")
_ATTRS = ("__launch_bounds__", "__maxnreg__", "__cluster_dims__")
_QUALIFIERS = frozenset({"const", "volatile", "__restrict__", "__restrict", "restrict",
                         "__grid_constant__", "struct", "class", "enum", "typename"})
_TYPE_WORDS = frozenset({"void", "bool", "char", "short", "int", "long", "float", "double",
                         "signed", "unsigned", "wchar_t", "char16_t", "char32_t", "auto"})


@dataclass
class _Param:
    span: tuple[int, int]
    name: str
    generated: bool   # the parameter was unnamed: ``name`` is ours
    decl: str         # one-line declaration with the name, without a default


@dataclass
class _Kernel:
    name: str
    line: int
    head: tuple[int, int]      # span replaced by the body function's header, up to its '('
    params: tuple[int, int]    # span inside the parentheses
    close: int                 # index of the body's closing '}'
    attrs: list[str] = field(default_factory=list)  # launch attributes moved to the wrapper


def instrument(source: str) -> str:
    """The source with every extern "C" kernel wrapped to count finished blocks."""
    if "__gpusched" in source:
        raise ValueError("the source already uses the reserved prefix __gpusched")
    masked = _mask_directives(mask(source))
    kernels = _find_kernels(source, masked)
    if not kernels:
        raise ValueError('instrumentation found no extern "C" __global__ kernel in the source')
    out, at = [], 0
    for k in kernels:
        params = _params(masked, k)
        out.append(source[at:k.head[0]])
        out.append(f"static __device__ __forceinline__ void {BODY_PREFIX}{k.name}(")
        out.append("\n" * source.count("\n", *k.head))
        out.append(_inner_params(source, k, params))
        out.append(source[k.params[1]:k.close + 1])
        out.append(" " + _wrapper(k, params))
        at = k.close + 1
    out.append(source[at:])
    return "".join(out)


def _mask_directives(masked: str) -> str:
    """Blank preprocessor lines; a __global__ inside one (a macro-made kernel) is refused."""
    chars = list(masked)
    for m in re.finditer(r"(?m)^[ \t]*#(?:[^\n\\]|\\.)*", masked, re.DOTALL):
        if re.search(r"\b__global__\b", m.group(0)):
            line = masked.count("\n", 0, m.start()) + 1
            raise ValueError(f"line {line}: a __global__ inside a preprocessor directive (a "
                             "macro that makes kernels) cannot be instrumented; write the "
                             "kernel out")
        for i in range(m.start(), m.end()):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


def _match(masked: str, i: int, open_: str, close: str) -> int:
    """Index of the bracket closing the one at ``i``."""
    depth = 0
    for j in range(i, len(masked)):
        c = masked[j]
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {open_!r} at line {masked.count(chr(10), 0, i) + 1}")


def _find_kernels(source: str, masked: str) -> list[_Kernel]:
    toks = [(m.group(0), m.start()) for m in _TOKEN.finditer(masked)]
    found: list[_Kernel] = []
    blocks: list[bool] = []       # per open '{': is it an extern "C" block
    decl_start = 0                # token index where the current declaration starts
    pending_block = False
    i = 0
    while i < len(toks):
        t, pos = toks[i]
        if t == "{":
            blocks.append(pending_block)
            pending_block = False
            decl_start = i + 1
        elif t in ("}", ";"):
            if t == "}" and blocks:
                blocks.pop()
            decl_start = i + 1
        elif t == "extern" and _extern_c(source, pos).endswith("{"):
            pending_block = True
        elif t == "__global__":
            k, i = _kernel_at(source, masked, toks, i, decl_start, any(blocks))
            found.append(k)
            decl_start = i + 1
        i += 1
    return found


def _extern_c(source: str, pos: int) -> str:
    m = _EXTERN_C.match(source, pos)
    return m.group(0) if m else ""


def _skip_attr(masked, toks, j, attrs) -> int:
    """If token ``j`` starts a launch attribute, record it and return the index after it."""
    t, p = toks[j]
    if t in _ATTRS and j + 1 < len(toks) and toks[j + 1][0] == "(":
        end = _match(masked, toks[j + 1][1], "(", ")")
        attrs.append(" ".join(masked[p:end + 1].split()))
        while j < len(toks) and toks[j][1] <= end:
            j += 1
    return j


def _kernel_at(source, masked, toks, i, decl_start, in_block):
    pos = toks[i][1]
    line = masked.count("\n", 0, pos) + 1
    attrs: list[str] = []
    j, name = i + 1, None
    while j < len(toks) and name is None:
        nj = _skip_attr(masked, toks, j, attrs)
        if nj != j:
            j = nj
        elif toks[j][0] == "void":
            j += 1
        elif re.fullmatch(r"[A-Za-z_]\w*", toks[j][0]):
            name = toks[j][0]
            j += 1
        else:
            break
    if name is None or j >= len(toks) or toks[j][0] != "(":
        raise ValueError(f"line {line}: a __global__ function whose header instrumentation "
                         "cannot read: write it as extern \"C\" __global__ void NAME(...) {...}")
    declared_c = (decl_start < i and toks[decl_start][0] == "extern"
                  and bool(_extern_c(source, toks[decl_start][1])))
    if not (declared_c or in_block):
        raise ValueError(f"kernel {name} (line {line}): not extern \"C\"; instrumentation "
                         "keeps the kernel's name only with C linkage: declare it "
                         f'extern "C" __global__ void {name}(...)')
    b = decl_start + 3 if declared_c else decl_start   # past extern " "
    extra = []
    while b < i:
        nb = _skip_attr(masked, toks, b, attrs)
        if nb == b:
            extra.append(toks[b][0])
            b += 1
        else:
            b = nb
    if extra:
        raise ValueError(f"kernel {name} (line {line}): {' '.join(extra)!r} before __global__ "
                         "cannot be instrumented (templates and static kernels have no C name)")
    p_open = toks[j][1]
    p_close = _match(masked, p_open, "(", ")")
    k = j
    while k < len(toks) and toks[k][1] <= p_close:
        k += 1
    while k < len(toks):
        nk = _skip_attr(masked, toks, k, attrs)   # attributes after the parameter list
        if nk == k:
            break
        k = nk
    if k >= len(toks) or toks[k][0] != "{":
        raise ValueError(f"kernel {name} (line {line}): a declaration without a body; "
                         "instrumentation needs the definition only (drop the forward "
                         "declaration)")
    close = _match(masked, toks[k][1], "{", "}")
    head_start = toks[decl_start][1] if declared_c else min(pos, toks[decl_start][1])
    kern = _Kernel(name, line, (head_start, p_open + 1), (p_open + 1, p_close), close, attrs)
    while k < len(toks) and toks[k][1] <= close:
        k += 1
    return kern, k - 1


def _params(masked: str, k: _Kernel) -> list[_Param]:
    a, b = k.params
    text = masked[a:b]
    if not text.strip() or text.strip() == "void":
        return []
    spans, depth, angle, start = [], 0, 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c == "<":
            angle += 1
        elif depth == 0 and c == ">" and angle:
            angle -= 1
        elif c == "," and depth == 0 and angle == 0:
            spans.append((a + start, a + i))
            start = i + 1
    spans.append((a + start, a + len(text)))
    out = []
    for i, (s, e) in enumerate(spans):
        flat = " ".join(masked[s:e].split())
        name, generated = _declared_name(flat, k, i)
        decl = _top_level_before(flat, "=")
        if generated:
            decl = _with_name(decl, name)
        out.append(_Param((s, e), name, generated, decl))
    return out


def _inner_params(source: str, k: _Kernel, params: list[_Param]) -> str:
    """The body function's parameter text: the same characters with ``__grid_constant__``
    blanked and unnamed parameters given names."""
    pieces, at = [], k.params[0]
    for p in params:
        s, e = p.span
        pieces.append(source[at:s])
        piece = _GRID_CONSTANT.sub(" " * len("__grid_constant__"), source[s:e])
        if p.generated:
            body = piece.rstrip()
            piece = _with_name(body, p.name) + piece[len(body):]
        pieces.append(piece)
        at = e
    pieces.append(source[at:k.params[1]])
    return "".join(pieces)


def _with_name(decl: str, name: str) -> str:
    """Insert a name into an unnamed declarator (before a trailing array bound, if any)."""
    m = _ARRAY_TAIL.search(decl)
    if m:
        return decl[:m.start()] + " " + name + decl[m.start():]
    return decl + " " + name


def _declared_name(flat: str, k: _Kernel, i: int) -> tuple[str, bool]:
    where = f"kernel {k.name} (line {k.line}), parameter {i + 1}"
    if "..." in flat:
        raise ValueError(f"{where}: variadic parameters and parameter packs cannot be "
                         "instrumented")
    decl = _ARRAY_TAIL.sub("", _top_level_before(flat, "="))  # no default, no array bounds
    if "(" in decl:
        raise ValueError(f"{where} ({flat!r}): function-pointer or parenthesised declarators "
                         "cannot be instrumented; use a typedef")
    words = re.findall(r"[A-Za-z_]\w*|::|<|>|\*|&", decl)
    if not words:
        raise ValueError(f"{where}: cannot read the parameter {flat!r}")
    last, depth = words[-1], 0
    for w in words:
        depth += (w == "<") - (w == ">")
    type_words = [w for w in words[:-1] if w not in _QUALIFIERS and w not in ("*", "&")]
    named = (re.fullmatch(r"[A-Za-z_]\w*", last) is not None and last not in _QUALIFIERS
             and last not in _TYPE_WORDS and depth == 0 and bool(type_words)
             and words[-2] != "::")
    return (last, False) if named else (f"__gpusched_arg{i}", True)


def _top_level_before(text: str, ch: str) -> str:
    depth = 0
    for i, c in enumerate(text):
        if c in "(<[{":
            depth += 1
        elif c in ")>]}":
            depth -= 1
        elif c == ch and depth == 0:
            return text[:i].strip()
    return text.strip()


def _wrapper(k: _Kernel, params: list[_Param]) -> str:
    plist = ", ".join([p.decl for p in params] + [f"unsigned long long* {PROGRESS_PARAM}"])
    attrs = "".join(f" {a}" for a in k.attrs)
    call = ", ".join(p.name for p in params)
    return (f'extern "C" __global__ void{attrs} {k.name}({plist}) {{ '
            f"__shared__ unsigned int {LEFT}; if (threadIdx.x == 0 && threadIdx.y == 0 && "
            f"threadIdx.z == 0) {LEFT} = blockDim.x * blockDim.y * blockDim.z; "
            f"__syncthreads(); {BODY_PREFIX}{k.name}({call}); __threadfence(); "
            f"if (atomicSub(&{LEFT}, 1u) == 1u) {{ __threadfence_system(); "
            f"atomicAdd({PROGRESS_PARAM}, 1ULL); }} }}")
