"""Label files and how their ids line up with a model's classes. Pure logic, no file access.

Formats: plain text (one label per line, numbered from 0), ``ID NAME`` lines (Coral style),
and TF Object Detection ``.pbtxt`` label maps (``item { id: 1 display_name: "sedan" }``).
"""

from __future__ import annotations

import re

_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_DISPLAY = re.compile(r"""\bdisplay_name\s*:\s*(?:"([^"]*)"|'([^']*)')""")
_NAME = re.compile(r"""\bname\s*:\s*(?:"([^"]*)"|'([^']*)')""")
_ID = re.compile(r"\bid\s*:\s*(-?\d+)")
_NUMBERED = re.compile(r"^\s*(\d+)[\s:,]+(\S.*?)\s*$")
_COMMENT = re.compile(r"#[^\n]*")

# First rows that stand for "no class": a label file with one of these first may describe a
# model whose outputs leave the background row out (label offset 1).
BACKGROUND_NAMES = frozenset({"background", "__background__", "???", "bg", "unlabeled", "none",
                              "unknown", "nothing"})


class LabelError(ValueError):
    """A label file cannot be read, or does not fit the model's classes."""


def parse_labels(text: str, *, pbtxt: bool) -> dict[int, str]:
    """Map label id to label.

    Plain files number lines from 0 (blank lines keep their number but carry no label);
    a file whose every line is ``ID NAME`` uses those ids; pbtxt items carry their ids.
    """
    if pbtxt:
        return _parse_pbtxt(text)
    lines = text.splitlines()
    filled = [line for line in lines if line.strip()]
    numbered = [_NUMBERED.match(line) for line in filled]
    if filled and all(numbered) and len(filled) > 1:
        out: dict[int, str] = {}
        for m in numbered:
            assert m is not None
            ident = int(m.group(1))
            if ident in out:
                raise LabelError(f"id {ident} appears twice")
            out[ident] = m.group(2)
        return out
    labels = {i: line.strip() for i, line in enumerate(lines) if line.strip()}
    if not labels:
        raise LabelError("the file holds no labels")
    return labels


def _parse_pbtxt(text: str) -> dict[int, str]:
    labels: dict[int, str] = {}
    for body in _ITEM.findall(_COMMENT.sub("", text)):
        ident = _ID.search(body)
        named = _DISPLAY.search(body) or _NAME.search(body)
        if not ident or not named:
            continue
        key = int(ident.group(1))
        if key in labels:
            raise LabelError(f"id {key} appears twice")
        labels[key] = named.group(1) if named.group(1) is not None else named.group(2)
    if not labels:
        raise LabelError("no 'item { id: ... name: ... }' entries found")
    return labels


def is_background(label: str) -> bool:
    return label.strip().lower() in BACKGROUND_NAMES


def fit_labels(labels: dict[int, str], classes: int) -> int:
    """The label offset that lines ``labels`` up with a model of ``classes`` output classes.

    Ids 0..classes-1 fit as they are (offset 0). Ids 0..classes fit with offset 1 when id 0
    is a background row the model does not output, or is absent (a TF Object Detection map
    numbered from 1). Ids 0..classes-2, with no background row, fit with offset -1 (the model
    outputs background first; class 0 stays unnamed). Anything else is refused with both
    numbers: a label file written for another model gives wrong names, silently, for every
    result.
    """
    if not labels:
        return 0
    if classes <= 0:
        raise LabelError(f"the model has {classes} output classes")
    low, high = min(labels), max(labels)
    if low < 0:
        raise LabelError(f"negative label id {low}")
    if high + 1 == classes:
        return 0
    if high == classes and (0 not in labels or is_background(labels[0])):
        return 1
    if high + 2 == classes and len(labels) == high + 1 and not is_background(labels[0]):
        # Labels written without the background row of a model that outputs one first
        # (1000 ImageNet names for a 1001-wide MobileNet): class 0 stays unnamed.
        return -1
    what = f"{len(labels)} labels" + (f" (ids {low}..{high})" if high + 1 != len(labels) else "")
    if high == classes:
        hint = (f"; one more label than classes, but the first, {labels[0]!r}, is not a "
                "background row")
    else:
        hint = ""
    raise LabelError(f"{what} for a model with {classes} output classes{hint}")


def check_declared_labels(labels: dict[int, str], offset: int, classes: int) -> None:
    """Refuse a manifest's labels that name classes the model does not have, or leave more
    than one of its classes (a background row) unnamed."""
    if not labels or classes <= 0:
        return
    covered = {i - offset for i in labels} & set(range(classes))
    beyond = sorted(i for i in labels if i - offset >= classes)
    if beyond:
        raise LabelError(f"{len(labels)} labels with label_offset {offset} for a model with "
                         f"{classes} output classes: label id {beyond[0]} has no class")
    if classes - len(covered) > 1:
        raise LabelError(f"{len(labels)} labels with label_offset {offset} for a model with "
                         f"{classes} output classes: {classes - len(covered)} classes have "
                         "no label")
