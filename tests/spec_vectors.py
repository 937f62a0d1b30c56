"""Reads the hex test vectors embedded in protocols/*.md.

A vector is an HTML comment `<!-- vector NAME -->` followed by a fenced ```hex block.
"""

from __future__ import annotations

import re
from pathlib import Path

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"
_VECTOR = re.compile(r"<!--\s*vector\s+([\w.-]+)\s*-->\s*```hex\s*\n(.*?)```", re.DOTALL)


def vectors(spec: str) -> dict[str, bytes]:
    text = (PROTOCOLS / spec).read_text()
    return {name: bytes.fromhex("".join(body.split())) for name, body in _VECTOR.findall(text)}
