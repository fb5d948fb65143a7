"""Pure functions and one collector: IOPub messages in, nbformat outputs out.

No kernel and no I/O here, so every rule can be unit-tested with scripted
messages. The collector keeps outputs exactly as Jupyter stores them (built by
``nbformat.v4.output_from_msg``), with streams merged, carriage returns and
backspaces applied the way JupyterLab applies them, display updates and
``clear_output`` honoured. It bounds memory: one output holds at most
``max_output_bytes``, and at most ``max_outputs`` outputs are kept; the rest is
counted, not stored. Once the collector is full, further outputs are only
counted: no node is built for them, so a flood costs little per message.

The kernel-side output guard (``kernel.Kernel.prepare``) drops rich outputs
before they are sent. Its notices carry its running totals in their metadata
under ``GUARD_METADATA_KEY``; the collector adds them to its own counts.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nbformat import NotebookNode

__all__ = [
    "GUARD_METADATA_KEY",
    "OutputCollector",
    "OutputLimits",
    "apply_control_chars",
    "error_from_reply",
    "output_size",
    "strip_ansi",
]

#: Metadata key of the kernel-side guard's notices: ``{"dropped_outputs": n,
#: "dropped_chars": n}``, its totals so far in the current run.
GUARD_METADATA_KEY = "kernel-mcp/output-guard"

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CR_NEWLINE = re.compile(r"\r+\n")
_OVERWRITTEN_LINE = re.compile(r"^[^\n]*\r+", re.MULTILINE)
_BACKSPACED = re.compile(r"[^\n\x08]\x08")


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences (colours, cursor moves, OSC titles)."""
    return _ANSI.sub("", text)


def apply_control_chars(text: str) -> str:
    """Apply ``\\r`` and ``\\b`` as JupyterLab does when it shows a stream.

    ``\\r\\n`` is a newline; otherwise a ``\\r`` erases its line so far; a
    ``\\b`` erases the character before it.
    """
    if "\r" in text:
        text = _CR_NEWLINE.sub("\n", text)
        text = _OVERWRITTEN_LINE.sub("", text)
    while "\b" in text:
        reduced = _BACKSPACED.sub("", text)
        if reduced == text:
            text = text.replace("\b", "")
            break
        text = reduced
    return text


def output_size(output: Mapping[str, Any]) -> int:
    """Approximate stored size of one output, in characters of its payload."""
    kind = output.get("output_type")
    if kind == "stream":
        return len(output.get("text", ""))
    if kind == "error":
        return sum(len(line) for line in output.get("traceback", [])) + len(
            output.get("evalue", "")
        )
    return _data_size(output.get("data"))


def _data_size(data: Any) -> int:
    if not isinstance(data, Mapping):
        return 0
    total = 0
    for value in data.values():
        total += len(value) if isinstance(value, str) else len(json.dumps(value))
    return total


def error_from_reply(content: Mapping[str, Any]) -> NotebookNode:
    """The error output for a failed ``execute_reply`` that no IOPub error matched.

    A kernel can fail while reporting a cell's exception (ipykernel cannot send
    a traceback holding a lone surrogate): its reply then says ``error`` with
    the reporting failure's name, and no error output is published. An
    ``aborted`` reply means the cell never ran.
    """
    if content.get("status") == "aborted":
        ename = "ExecutionAborted"
        evalue = "the kernel aborted this execution without running it"
        traceback: list[str] = []
    else:
        ename = str(content.get("ename") or "KernelError")
        evalue = str(content.get("evalue") or "")
        traceback = [str(line) for line in content.get("traceback") or []]
    if not traceback:
        headline = f"{ename}: {evalue}" if evalue else ename
        traceback = [
            headline,
            "(The kernel's reply reported this error, but the kernel published no error "
            "output: it may have failed while reporting the cell's own exception.)",
        ]
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=traceback)


# -- outputs as nbformat stores them --------------------------------------------------
# Built here, not with nbformat.v4.output_from_msg / new_output: those validate every
# output against nbformat's JSON schema (on every message of a run: docs/benchmarks.md),
# and raise on a message a kernel got slightly wrong (a non-string text/plain
# published by hostile code), which would cost the run its reply. These builders make
# the same shapes and coerce what nbformat would refuse; the tests validate the
# notebooks that come out.


def _mime_bundle(data: Any) -> NotebookNode:
    """A display's data as nbformat wants it: text as strings, JSON types as JSON."""
    bundle = NotebookNode()
    if not isinstance(data, Mapping):
        return bundle
    for mime, value in data.items():
        if not isinstance(mime, str):
            continue
        if mime == "application/json" or mime.endswith("+json") or isinstance(value, str):
            bundle[mime] = value
        elif isinstance(value, list) and all(isinstance(part, str) for part in value):
            bundle[mime] = "".join(value)
        else:
            bundle[mime] = json.dumps(value, default=str)
    return bundle


def output_from_msg(msg: Mapping[str, Any]) -> NotebookNode:
    """The notebook output of an IOPub output message (display, result, stream, error)."""
    kind = msg["header"]["msg_type"]
    content = msg.get("content") or {}
    if kind in ("display_data", "execute_result"):
        metadata = content.get("metadata")
        node = NotebookNode(
            output_type=kind,
            data=_mime_bundle(content.get("data")),
            metadata=NotebookNode(metadata) if isinstance(metadata, Mapping) else NotebookNode(),
        )
        if kind == "execute_result":
            count = content.get("execution_count")
            node["execution_count"] = count if isinstance(count, int) else None
        return node
    if kind == "stream":
        return stream_output(_kernel_stream(content.get("name")), str(content.get("text", "")))
    if kind == "error":
        return NotebookNode(
            output_type="error",
            ename=str(content.get("ename", "")),
            evalue=str(content.get("evalue", "")),
            traceback=[str(line) for line in content.get("traceback") or []],
        )
    raise ValueError(f"not an output message: {kind!r}")


#: The stream name of an answered ``input()``'s echo (what JupyterLab records): never a
#: kernel's own stream, so that replies can leave it out.
STDIN = "stdin"
#: What an echo shows in place of a password (JupyterLab's mask: it hides the length).
PASSWORD_MASK = "········"


def _kernel_stream(name: Any) -> str:
    """A kernel's stream is stdout or stderr, whatever name it sends."""
    return "stderr" if name == "stderr" else "stdout"


def stream_output(name: str, text: str) -> NotebookNode:
    return NotebookNode(
        output_type="stream",
        name=name if name in ("stdout", "stderr", STDIN) else "stdout",
        text=text,
    )


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """What one execution may keep in memory (and later in its notebook)."""

    max_output_bytes: int = 10 * 1024 * 1024
    max_outputs: int = 1000


@dataclass(slots=True)
class _Stream:
    """A stream output being built: processed text plus the unfinished last line."""

    output: NotebookNode
    done: list[str] = field(default_factory=list)
    done_len: int = 0
    tail: str = ""


class OutputCollector:
    """Accumulates the outputs of one execution from its IOPub messages.

    Feed it only messages whose parent is the execution's request; ``status``
    and unknown types are ignored. Read ``outputs`` when done.
    """

    def __init__(self, limits: OutputLimits | None = None) -> None:
        self.limits = limits or OutputLimits()
        self.execution_count: int | None = None
        self.error: NotebookNode | None = None
        self.latest_line = ""
        self._dropped_chars = 0
        self._dropped_outputs = 0
        self._guard_chars = 0
        self._guard_outputs = 0
        self._outputs: list[NotebookNode] = []
        self._streams: dict[int, _Stream] = {}
        self._display_ids: dict[str, list[int]] = {}
        self._clear_on_next = False

    # -- reading ---------------------------------------------------------------
    @property
    def outputs(self) -> list[NotebookNode]:
        """The outputs so far, streams finalised (cheap to call repeatedly)."""
        for index, stream in self._streams.items():
            self._outputs[index]["text"] = "".join(stream.done) + apply_control_chars(stream.tail)
        return self._outputs

    @property
    def dropped_chars(self) -> int:
        """Characters not kept: cut here, plus what the kernel-side guard reported."""
        return self._dropped_chars + self._guard_chars

    @property
    def dropped_outputs(self) -> int:
        """Outputs not kept: dropped here, plus what the kernel-side guard reported."""
        return self._dropped_outputs + self._guard_outputs

    @property
    def full(self) -> bool:
        """No room for another output (until a ``clear_output``)."""
        return len(self._outputs) >= self.limits.max_outputs

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_chars or self.dropped_outputs)

    # -- feeding ---------------------------------------------------------------
    def feed(self, msg: dict[str, Any]) -> None:
        """Apply one IOPub message."""
        kind = msg["header"]["msg_type"]
        content = msg.get("content", {})
        if kind == "execute_input":
            self.execution_count = content.get("execution_count")
        elif kind == "stream":
            self._flush_pending_clear()
            self._stream(_kernel_stream(content.get("name")), content.get("text", ""))
        elif kind in ("display_data", "execute_result"):
            self._flush_pending_clear()
            if kind == "execute_result":
                self.execution_count = content.get("execution_count", self.execution_count)
            self._read_guard_totals(content)
            if self.full:
                # Count only: building a node per message is what makes a flood slow.
                self._dropped_outputs += 1
                self._dropped_chars += _data_size(content.get("data"))
                return
            self._append(output_from_msg(msg), content.get("transient") or {})
        elif kind == "update_display_data":
            self._read_guard_totals(content)
            self._update_display(content)
        elif kind == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self._clear()
        elif kind == "error":
            self._flush_pending_clear()
            self.add_error(output_from_msg(msg))

    def add_error(self, node: NotebookNode) -> None:
        """Record an error output (one built from a shell reply, or from IOPub)."""
        self._flush_pending_clear()
        self.error = node
        self._append(node, {})

    # -- internals -------------------------------------------------------------
    def _flush_pending_clear(self) -> None:
        if self._clear_on_next:
            self._clear_on_next = False
            self._clear()

    def _read_guard_totals(self, content: Mapping[str, Any]) -> None:
        metadata = content.get("metadata")
        totals = metadata.get(GUARD_METADATA_KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(totals, Mapping):
            return
        # Running totals for the run: the latest (largest) report is the count.
        with contextlib.suppress(TypeError, ValueError):
            self._guard_outputs = max(self._guard_outputs, int(totals.get("dropped_outputs", 0)))
            self._guard_chars = max(self._guard_chars, int(totals.get("dropped_chars", 0)))

    def _clear(self) -> None:
        self._outputs.clear()
        self._streams.clear()
        self._display_ids.clear()

    def echo_input(self, prompt: str, answer: str, *, password: bool) -> None:
        """Record an answered ``input()`` where it happened, as JupyterLab does: the prompt
        and the answer as a ``stdin`` stream; for a password, a fixed mask instead.

        Replies leave ``stdin`` streams out (they are not the program's output); the
        recorded notebook keeps them.
        """
        self._flush_pending_clear()
        self._stream(STDIN, f"{prompt}{PASSWORD_MASK if password else answer}\n", shown=False)

    def _room(self) -> bool:
        if len(self._outputs) < self.limits.max_outputs:
            return True
        self._dropped_outputs += 1
        return False

    def _stream(self, name: str, text: str, *, shown: bool = True) -> None:
        if text and shown:
            stripped = text.rstrip("\r\n")
            if stripped:
                self.latest_line = strip_ansi(stripped.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1])[
                    :200
                ]
        last = len(self._outputs) - 1
        stream = self._streams.get(last)
        if stream is None or stream.output["name"] != name:
            if not self._room():
                self._dropped_chars += len(text)
                return
            node = stream_output(name, "")
            self._outputs.append(node)
            stream = self._streams[len(self._outputs) - 1] = _Stream(node)
        cap = self.limits.max_output_bytes
        room = cap - stream.done_len - len(stream.tail)
        if room <= 0:
            self._dropped_chars += len(text)
            return
        if len(text) > room:
            self._dropped_chars += len(text) - room
            text = text[:room]
        raw = stream.tail + text
        cut = raw.rfind("\n")
        if cut >= 0:
            finished = apply_control_chars(raw[: cut + 1])
            stream.done.append(finished)
            stream.done_len += len(finished)
            stream.tail = raw[cut + 1 :]
        else:
            stream.tail = raw
        if len(stream.tail) > cap // 2:
            # A line erased by a later '\r' (a progress bar) is erased whatever follows:
            # drop it now. Only a trailing '\r' run may still become part of '\r\n'.
            stream.tail = stream.tail[stream.tail.rstrip("\r").rfind("\r") + 1 :]
        if len(stream.tail) > cap // 2:
            # A flood with no newline: settle it now so the tail stays bounded.
            finished = apply_control_chars(stream.tail)
            stream.done.append(finished)
            stream.done_len += len(finished)
            stream.tail = ""

    def _fit(self, node: NotebookNode) -> NotebookNode:
        size = output_size(node)
        if size <= self.limits.max_output_bytes:
            return node
        if node.get("output_type") == "error":
            # An error has no "data" in nbformat: shorten its traceback instead.
            cap = self.limits.max_output_bytes
            node["evalue"] = str(node.get("evalue", ""))[: cap // 4]
            kept: list[str] = []
            room = cap - len(node["evalue"])
            for line in node.get("traceback", []):
                if len(line) > room:
                    kept.append(line[: max(room, 0)] + "\n[… traceback cut: over the limit …]")
                    break
                kept.append(line)
                room -= len(line)
            self._dropped_chars += size - output_size(node)
            node["traceback"] = kept
            return node
        self._dropped_chars += size
        mimes = ", ".join(sorted(node.get("data", {})))
        notice = f"[output of {size} characters ({mimes}) dropped: over the per-output limit]"
        node["data"] = {"text/plain": notice}
        node["metadata"] = {}
        return node

    def _append(self, node: NotebookNode, transient: dict[str, Any]) -> None:
        if not self._room():
            self._dropped_chars += output_size(node)
            return
        self._outputs.append(self._fit(node))
        display_id = transient.get("display_id")
        if display_id:
            self._display_ids.setdefault(display_id, []).append(len(self._outputs) - 1)

    def _update_display(self, content: dict[str, Any]) -> None:
        display_id = (content.get("transient") or {}).get("display_id")
        for index in self._display_ids.get(display_id or "", []):
            target = self._outputs[index]
            target["data"] = content.get("data", {})
            target["metadata"] = content.get("metadata", {})
            self._fit(target)
