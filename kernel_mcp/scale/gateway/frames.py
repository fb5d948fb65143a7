"""Jupyter messages as the gateway's WebSocket carries them: one JSON text frame each,
with its ``channel``, or the legacy binary framing for messages with buffers.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
import uuid
from datetime import datetime, timezone
from typing import Any

__all__ = ["PROTOCOL_VERSION", "decode", "message"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "5.3"
USERNAME = "kernel-mcp"


def message(
    msg_type: str,
    content: dict[str, Any],
    channel: str,
    *,
    session: str,
    parent: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new message of ``msg_type`` on ``channel``, as the WebSocket protocol frames it."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": USERNAME,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": PROTOCOL_VERSION,
        },
        "parent_header": parent or {},
        "metadata": metadata or {},
        "content": content,
        "buffers": [],
        "channel": channel,
    }


def decode(frame: str | bytes) -> dict[str, Any] | None:
    """One WebSocket frame as a Jupyter message dict, or None if it is not one."""
    try:
        msg = _unpack_binary(frame) if isinstance(frame, bytes) else json.loads(frame)
    except (ValueError, IndexError, struct.error) as exc:
        log.warning("ignoring a malformed frame from the kernel gateway: %s", exc)
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("header"), dict):
        log.warning("ignoring a frame from the kernel gateway that is not a message")
        return None
    for key in ("parent_header", "metadata", "content"):
        if not isinstance(msg.get(key), dict):
            msg[key] = {}
    msg.setdefault("buffers", [])
    return msg


def _unpack_binary(frame: bytes) -> dict[str, Any]:
    """Jupyter's legacy binary framing: nbufs, offsets, the JSON message, its buffers."""
    (count,) = struct.unpack("!I", frame[:4])
    offsets = [*struct.unpack(f"!{count}I", frame[4 : 4 * (count + 1)]), len(frame)]
    parts = [frame[start:stop] for start, stop in itertools.pairwise(offsets)]
    msg = json.loads(parts[0].decode("utf-8"))
    if isinstance(msg, dict):
        msg["buffers"] = parts[1:]
    return msg
