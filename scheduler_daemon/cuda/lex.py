"""Just enough C++ lexing to edit CUDA source safely: blank out comments and literals.

``mask`` returns text of the same length in which comments (and, by default, the contents of
string and character literals) are spaces, newlines kept, so positions found in the masked
text are positions in the source. Handles ``//`` and ``/* */`` comments, escapes, raw strings
(``R"d(...)d"``) and C++14 digit separators (``1'000``). Not a preprocessor: macros are not
expanded.
"""
from __future__ import annotations

import re

_RAW_PREFIX = re.compile(r'(?:u8|[uUL])?R"([^()\\\s"]{0,16})\(')


def splice(text: str) -> str:
    """Translation phase 2: join lines ending in a backslash."""
    return text.replace("\\\r\n", "").replace("\\\n", "")


def _blank(s: str) -> str:
    return "".join(c if c == "\n" else " " for c in s)


def _digit_separator(text: str, i: int) -> bool:
    j = i
    while j > 0 and (text[j - 1].isalnum() or text[j - 1] in "_.'"):
        j -= 1
    return j < i and text[j].isdigit()


def mask(text: str, strings: bool = True) -> str:
    """Comments -> spaces; with ``strings``, literal contents -> spaces too (quotes kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(_blank(text[i:j]))
            i = j
        elif c == "R" or (c in "uUL8" and _RAW_PREFIX.match(text, i)):
            m = _RAW_PREFIX.match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                end = text.find(")" + m.group(1) + '"', m.end())
                end = n if end < 0 else end
                j = min(n, end + len(m.group(1)) + 2)
                body = text[m.end():end]
                out.append(text[i:m.end()] + (_blank(body) if strings else body) + text[end:j])
                i = j
            else:
                out.append(c)
                i += 1
        elif c in "\"'" and not (c == "'" and _digit_separator(text, i)):
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            body = text[i + 1:j - 1] if j - 1 > i else ""
            out.append(c + (_blank(body) if strings else body) + text[j - 1:j] if j - 1 > i
                       else c)
            i = j
        else:
            out.append(c)
            i += 1
    res = "".join(out)
    assert len(res) == len(text)
    return res
