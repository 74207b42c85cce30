"""Read what the driver needs from PTX text: the kernels (``.entry``) and their parameters.

Parameter sizes let the launch path check a launch's arguments against the kernel before the
driver reads them (a wrong count or size makes ``cuLaunchKernel`` read past the argument array).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_ENTRY = re.compile(r"\.entry\s+([A-Za-z_$%][\w$%]*)\s*(\(([^)]*)\))?")
_PARAM = re.compile(r"\.param\s+(?:\.align\s+(\d+)\s+)?\.([busf])(\d+)\b"
                    r"((?:\s+\.ptr)?(?:\s+\.(?:global|const|shared|local))?"
                    r"(?:\s+\.align\s+\d+)?)\s+([\w$%]+)\s*(?:\[(\d+)\])?")


@dataclass(frozen=True)
class PtxParam:
    """One kernel parameter: ``kind`` is PTX's b/u/s/f, ``bits`` its element width, ``count``
    the array length (structs passed by value are ``.b8 name[N]``)."""

    name: str
    kind: str
    bits: int
    count: int = 1

    @property
    def size(self) -> int:
        return self.bits // 8 * self.count

    @property
    def is_scalar(self) -> bool:
        return self.count == 1

    def describe(self) -> str:
        base = f".{self.kind}{self.bits}"
        return base if self.count == 1 else f"{base}[{self.count}] ({self.size}-byte struct)"


def entries(ptx: str) -> dict[str, tuple[PtxParam, ...]]:
    """Kernel name -> its parameters, in the order they appear."""
    out: dict[str, tuple[PtxParam, ...]] = {}
    for m in _ENTRY.finditer(_strip_comments(ptx)):
        params = []
        for p in _PARAM.finditer(m.group(3) or ""):
            params.append(PtxParam(p.group(5), p.group(2), int(p.group(3)),
                                   int(p.group(6)) if p.group(6) else 1))
        out[m.group(1)] = tuple(params)
    return out


def _strip_comments(ptx: str) -> str:
    ptx = re.sub(r"/\*.*?\*/", " ", ptx, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", ptx)


def check_text(ptx: str) -> None:
    """Raise ``ValueError`` unless this looks like a PTX module with kernels."""
    body = _strip_comments(ptx)
    if not re.search(r"^\s*\.version\s+\d+\.\d+", body, re.MULTILINE):
        raise ValueError("the PTX has no '.version X.Y' directive: is it PTX text?")
    if not re.search(r"^\s*\.target\s+\w+", body, re.MULTILINE):
        raise ValueError("the PTX has no '.target' directive")
    if not _ENTRY.search(body):
        raise ValueError("the PTX defines no kernel (no '.entry')")
