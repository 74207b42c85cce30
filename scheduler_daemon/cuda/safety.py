"""What a tenant's CUDA source and NVRTC options may contain.

Source must not read the daemon's files: every ``#include`` (and ``#include_next``,
``#import``, ``#embed``, ``__has_include``) is refused, since NVRTC opens any path and its log
would echo the file back. Kernels must be self-contained (inline what headers they need). A
directive is looked for in three views, so that no lexer trick hides one: the source with
comments blanked by our lexer (``#/**/include``), the raw source (a raw string that fools the
lexer into a comment) and the source with every ``/*...*/`` blanked without lexing (a comment
before ``#`` on a line our lexer thinks is in a string). Any whitespace counts as whitespace
(``\f#include``, ``#\vinclude``), a lone CR ends a line, a backslash before trailing blanks
splices lines, and trigraphs (``??=include``) are refused. A directive-like line inside a
string or a block comment is refused too: the price of not being fooled.
This is the first line of defence; compiles also run in a sandbox with no file access at all
(``sandbox.py``). Options come from an allow-list of code generation flags; include paths,
pre-includes and output options are refused.
"""
from __future__ import annotations

import re

from scheduler_daemon.cuda.lex import mask, splice

_DIRECTIVE = re.compile(r"(?m)^[^\S\n]*(?:#|%:)[^\S\n]*(include_next|include|import|embed)\b")
_HAS_INCLUDE = re.compile(r"\b__has_include(?:_next)?\b")
_TRIGRAPH = re.compile(r"\?\?[=/'()!<>-]")
_SPLICE = re.compile(r"\\[^\S\n]*\n")     # GCC and clang splice a backslash before blanks too
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)

# exact flags, and prefixes of flags that take a value (--flag=value)
_FLAGS = frozenset({
    "-G", "--device-debug", "-lineinfo", "--generate-line-info", "-use_fast_math",
    "--use_fast_math", "-extra-device-vectorization", "--extra-device-vectorization",
    "-restrict", "--restrict", "-w", "--disable-warnings", "-default-device",
    "--device-as-default-execution-space", "-dw",
})
_PREFIXES = ("-std=", "--std=", "-D", "--define-macro=", "-U", "--undefine-macro=",
             "-ftz=", "--ftz=", "-prec-sqrt=", "--prec-sqrt=", "-prec-div=", "--prec-div=",
             "-fmad=", "--fmad=", "-maxrregcount=", "--maxrregcount=", "-arch=",
             "--gpu-architecture=", "-dopt=", "--dopt=")
ARCH_PREFIXES = ("-arch=", "--gpu-architecture=")


def check_source(source: str) -> None:
    """Raise ``ValueError`` (naming the line) if the source would make NVRTC read a file."""
    if "\0" in source:
        raise ValueError("the CUDA source contains a NUL character")
    if _TRIGRAPH.search(source):
        raise ValueError("trigraphs (??= and the like) are not allowed in CUDA source: write "
                         "the character itself")
    raw = _SPLICE.sub("", splice(source).replace("\r\n", "\n").replace("\r", "\n"))
    no_comments = _BLOCK_COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), raw)
    for text in (mask(raw, strings=False), raw, no_comments):
        m = _DIRECTIVE.search(text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            raise ValueError(f"line {line}: #{m.group(1)} is not allowed: the daemon compiles "
                             "tenants' source and reads no files for it; put what the header "
                             "declares into the source")
        m = _HAS_INCLUDE.search(text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            raise ValueError(f"line {line}: __has_include is not allowed (the daemon's files "
                             "are not the tenant's to probe)")


def check_options(options: list[str]) -> None:
    for opt in options:
        if not isinstance(opt, str) or "\0" in opt or "\n" in opt:
            raise ValueError(f"NVRTC option {opt!r} is not a one-line string")
        if opt in _FLAGS or (opt.startswith(_PREFIXES) and len(opt) > 2):
            continue
        raise ValueError(f"NVRTC option {opt!r} is not allowed: use code generation options "
                         "only (-std=, -D, -U, -arch=, -maxrregcount=, --use_fast_math, "
                         "-ftz=, -prec-div=, -prec-sqrt=, -fmad=, -lineinfo, -G, ...); include "
                         "paths and pre-includes are refused")


def arch_option(options: list[str]) -> str | None:
    """The architecture an option list asks for, if any (``compute_80``, ``sm_90a``)."""
    for opt in options:
        for p in ARCH_PREFIXES:
            if opt.startswith(p):
                return opt[len(p):]
    return None
