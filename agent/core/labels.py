"""Parsing label files: plain text (one per line) and TF Object Detection ``.pbtxt`` maps."""

from __future__ import annotations

import re

_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_NAME = re.compile(r"""(?:display_name|name)\s*:\s*["']([^"']*)["']""")
_ID = re.compile(r"\bid\s*:\s*(\d+)")


def parse_labels(text: str, *, pbtxt: bool) -> dict[int, str]:
    """Map class id to label. Plain files number lines from 0; pbtxt items carry their ids."""
    if not pbtxt:
        return {i: line.strip() for i, line in enumerate(text.splitlines()) if line.strip()}
    labels: dict[int, str] = {}
    for body in _ITEM.findall(text):
        names = dict.fromkeys(_NAME.findall(body))
        ident = _ID.search(body)
        if ident and names:
            display = re.search(r"""display_name\s*:\s*["']([^"']*)["']""", body)
            labels[int(ident.group(1))] = display.group(1) if display else next(iter(names))
    if not labels:
        raise ValueError("no 'item { name: ... id: ... }' entries found")
    return labels
