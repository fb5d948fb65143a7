"""What of a kernel output a watcher is shown: known kinds, capped text, checked images.

Pure functions, no I/O. An output here is an nbformat output (a mapping with
``output_type``); what comes out is a small JSON-able dict of the same shape that the
viewer's script renders. Everything in it is still untrusted text: the script puts
text in through ``textContent`` only, and HTML, SVG and JavaScript never reach the
page's own document (see ``static/viewer.js``). What this module adds is bounds (a
watcher's page is not the place for a 10 MB stream) and a choice of one rich
representation per display, so that the page does not receive every one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FRAMED_TYPES",
    "IMAGE_TYPES",
    "TEXT_TYPES",
    "ViewLimits",
    "cap_text",
    "viewable",
]

#: Raster images, shown as ``data:`` URLs once their payload is checked to be base64.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
#: Markup that may carry script: shown only inside a sandboxed frame without scripts
#: and without the page's origin.
FRAMED_TYPES = ("text/html", "image/svg+xml")
#: Shown as text, never interpreted (JavaScript is shown as its source, not run).
TEXT_TYPES = (
    "text/markdown",
    "text/latex",
    "application/json",
    "application/javascript",
    "text/plain",
)
#: Which representation of a display the page gets, best first; text/plain rides along.
PREFERENCE = (*IMAGE_TYPES, "text/html", "image/svg+xml", *TEXT_TYPES)

_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ViewLimits:
    """How much of a run a watcher's page is sent."""

    max_text_chars: int = 100_000
    """One text (a stream, a traceback, a display's text): the beginning and the end."""
    max_image_chars: int = 4 * 1024 * 1024
    """One image's base64 payload."""
    max_outputs: int = 200
    """Outputs of one cell."""


def cap_text(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its beginning and its end, and a marker
    saying how much of the middle was left out."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    left_out = len(text) - head - tail
    return (
        f"{text[:head]}\n[kernel-mcp: {left_out} characters not shown here; "
        f"the session's notebook has them]\n{text[-tail:] if tail else ''}"
    )


def _text(value: Any) -> str:
    """A notebook's text: a string, or a list of strings (nbformat's multi-line form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return json.dumps(value, indent=1, default=str, ensure_ascii=False)


def _image(value: Any, limits: ViewLimits) -> str | None:
    """A base64 payload with its whitespace removed, or None when it is not one or is
    too large to send."""
    if not isinstance(value, str):
        return None
    payload = _WHITESPACE.sub("", value)
    if len(payload) > limits.max_image_chars or not _BASE64.fullmatch(payload):
        return None
    return payload


def _display(output: Mapping[str, Any], limits: ViewLimits) -> dict[str, Any]:
    data = output.get("data")
    data = data if isinstance(data, Mapping) else {}
    shown: dict[str, Any] = {}
    notes: list[str] = []
    for mime in PREFERENCE:
        if mime not in data or mime == "text/plain":
            continue
        if mime in IMAGE_TYPES:
            payload = _image(data[mime], limits)
            if payload is None:
                notes.append(f"{mime} output not shown (too large, or not base64)")
                continue
            shown[mime] = payload
        elif mime == "application/json":
            shown[mime] = cap_text(
                json.dumps(data[mime], indent=1, default=str, ensure_ascii=False),
                limits.max_text_chars,
            )
        else:
            shown[mime] = cap_text(_text(data[mime]), limits.max_text_chars)
        break
    if "text/plain" in data:
        shown["text/plain"] = cap_text(_text(data["text/plain"]), limits.max_text_chars)
    other = sorted(str(m) for m in data if m not in PREFERENCE)
    if other and not shown:
        notes.append(f"output of type {', '.join(other)} not shown")
    view: dict[str, Any] = {"output_type": output.get("output_type"), "data": shown}
    if output.get("output_type") == "execute_result":
        count = output.get("execution_count")
        view["execution_count"] = count if isinstance(count, int) else None
    transient = output.get("transient")
    if isinstance(transient, Mapping) and isinstance(transient.get("display_id"), str):
        view["display_id"] = transient["display_id"]
    if notes:
        view["notes"] = notes
    return view


def viewable(output: Mapping[str, Any], limits: ViewLimits) -> dict[str, Any]:
    """The part of one nbformat output that a watcher's page is sent."""
    kind = output.get("output_type")
    if kind == "stream":
        name = output.get("name")
        return {
            "output_type": "stream",
            "name": name if name in ("stdout", "stderr", "stdin") else "stdout",
            "text": cap_text(_text(output.get("text", "")), limits.max_text_chars),
        }
    if kind == "error":
        traceback = output.get("traceback")
        lines = [str(line) for line in traceback] if isinstance(traceback, list) else []
        return {
            "output_type": "error",
            "ename": cap_text(str(output.get("ename", "")), 1000),
            "evalue": cap_text(str(output.get("evalue", "")), limits.max_text_chars),
            "traceback": cap_text("\n".join(lines), limits.max_text_chars),
        }
    if kind in ("display_data", "execute_result", "update_display_data"):
        return _display(output, limits)
    return {"output_type": "unknown", "notes": [f"an output of kind {str(kind)[:40]!r}"]}
