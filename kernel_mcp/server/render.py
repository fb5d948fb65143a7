"""Execution -> reply: one readable text block, images, structured content.

Pure and the only place that truncates for a reply. The notebook keeps the
larger per-output cap; a reply keeps ``max_stream_chars`` of each stream (its
beginning and its end), at most ``max_images`` images of at most
``max_image_bytes`` each, and stays within ``max_reply_bytes`` in total, so
that MCP clients with a 1 MiB message limit can read it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from kernel_mcp.files.listing import FileListing
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.kernels.outputs import STDIN
from kernel_mcp.kernels.outputs import strip_ansi as _strip_ansi
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from kernel_mcp.notebooks.execute import NotebookRun
from kernel_mcp.server.views import (
    CellReport,
    ErrorInfo,
    FileList,
    FileText,
    NotebookReport,
    RunReport,
)

__all__ = [
    "Image",
    "NotebookReply",
    "Reply",
    "ReplyLimits",
    "render",
    "render_file_list",
    "render_file_text",
    "render_notebook",
]

IMAGE_TYPES = ("image/png", "image/jpeg")
# Rich types shown as text, best first, when the kernel sent no useful text/plain.
TEXT_TYPES = ("text/markdown", "text/html", "text/latex", "application/json")


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    max_stream_chars: int = 64 * 1024
    max_images: int = 8
    max_image_bytes: int = 512 * 1024
    max_reply_bytes: int = 900 * 1024


@dataclass(frozen=True, slots=True)
class Image:
    mime_type: str
    data: str
    """base64, as the kernel sent it."""


@dataclass(slots=True)
class Reply:
    text: str
    images: list[Image]
    report: RunReport
    is_error: bool = False


def strip_ansi(text: str) -> str:
    """Reply text: no ANSI codes, and no lone surrogates (JSON on the wire cannot carry them)."""
    text = _strip_ansi(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _cut(text: str, limit: int) -> tuple[str, int]:
    """Keep the beginning and the end of ``text``; say how much was cut."""
    if len(text) <= limit:
        return text, 0
    head = limit * 3 // 4
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[… {cut} characters cut …]\n{text[-tail:] if tail else ''}", cut


def _plain(data: dict[str, Any]) -> str | None:
    """The text a person would read for a rich output."""
    plain = data.get("text/plain")
    if isinstance(plain, list):
        plain = "".join(plain)
    default_repr = isinstance(plain, str) and plain.startswith("<IPython.core.display.")
    if plain and not default_repr:
        return str(plain)
    for mime in TEXT_TYPES:
        if mime in data:
            value = data[mime]
            if isinstance(value, list):
                value = "".join(value)
            return value if isinstance(value, str) else json.dumps(value, indent=1)
    return str(plain) if plain else None


def _decoded_size(b64: str) -> int:
    return len(b64) * 3 // 4


@dataclass(slots=True)
class _Collected:
    """What one execution's outputs hold, sorted for the reply (nothing cut yet)."""

    stdout: str
    stderr: str
    displays: list[tuple[list[str], str]]
    result: str | None
    images: list[Image]
    mime_types: list[str]
    notes: list[str]
    truncated: bool


def render(
    execution: Execution,
    limits: ReplyLimits,
    *,
    file: str | None = None,
    session_id: str | None = None,
    notebook: str | None = None,
    notes: list[str] | None = None,
) -> Reply:
    """Build the MCP-neutral reply for one execution."""
    got = _collect(execution, limits, list(notes or []) + list(execution.notes))
    stream_limit = limits.max_stream_chars
    while True:
        report, text = _report(execution, got, stream_limit, file, session_id, notebook)
        size = (
            len(text.encode("utf-8"))
            + len(report.model_dump_json().encode("utf-8"))
            + sum(len(i.data) for i in got.images)
        )
        if size <= limits.max_reply_bytes:
            break
        if got.images:
            got.images.pop()
            got.truncated = True
            if not any(n.startswith("Images dropped") for n in got.notes):
                got.notes.append(
                    "Images dropped to keep the reply under KERNEL_MCP_MAX_REPLY_BYTES."
                )
            continue
        if stream_limit == 0:
            break
        stream_limit //= 2
        got.truncated = True
    return Reply(text=text, images=got.images, report=report, is_error=execution.status != "ok")


def _collect(execution: Execution, limits: ReplyLimits, notes: list[str]) -> _Collected:
    """Sort the outputs into streams, displays, the result and images; say what was left out."""
    stdout_parts: list[str] = []
    stderr_parts: list[str] = []
    got = _Collected("", "", [], None, [], [], notes, execution.truncated)
    skipped_images = broken_images = 0
    for output in execution.outputs:
        kind = output.get("output_type")
        if kind == "stream":
            name = output.get("name")
            if name == STDIN:
                continue  # an answered input()'s echo: the notebook's record, not output
            (stderr_parts if name == "stderr" else stdout_parts).append(output.get("text", ""))
            continue
        if kind not in ("display_data", "execute_result"):
            continue
        data = output.get("data", {})
        got.mime_types += [mime for mime in data if mime not in got.mime_types]
        image_mime = next((m for m in IMAGE_TYPES if m in data), None)
        if image_mime is not None:
            payload = data[image_mime]
            payload = "".join(payload) if isinstance(payload, list) else str(payload)
            payload = payload.replace("\n", "")
            if (
                len(got.images) >= limits.max_images
                or _decoded_size(payload) > limits.max_image_bytes
            ):
                skipped_images += 1
            else:
                try:
                    base64.b64decode(payload, validate=True)
                    got.images.append(Image(image_mime, payload))
                except (binascii.Error, ValueError):
                    broken_images += 1
            continue
        text = _plain(data)
        if kind == "execute_result":
            got.result = text
        elif text is not None:
            got.displays.append((sorted(data), text))
    got.stdout = strip_ansi("".join(stdout_parts))
    got.stderr = strip_ansi("".join(stderr_parts))
    _note_what_was_left_out(execution, limits, got, skipped_images, broken_images)
    return got


def _note_what_was_left_out(
    execution: Execution, limits: ReplyLimits, got: _Collected, skipped: int, broken: int
) -> None:
    notes = got.notes
    if skipped:
        got.truncated = True
        notes.append(
            f"{skipped} image(s) left out: over {limits.max_images} images or "
            f"{limits.max_image_bytes} bytes each."
        )
    if broken:
        got.truncated = True
        notes.append(f"{broken} image(s) left out: not valid base64.")
    if execution.dropped_chars or execution.dropped_outputs:
        notes.append(
            f"Output over the kernel-side cap was not kept: {execution.dropped_chars} characters"
            + (f", {execution.dropped_outputs} outputs" if execution.dropped_outputs else "")
            + "."
        )
    if execution.status == "timeout":
        notes.insert(0, f"Timed out after {execution.timeout_s:g} s; output before it is shown.")
    elif execution.status == "kernel_died":
        notes.insert(0, f"The kernel died ({execution.death}).")
    elif execution.status == "interrupted":
        notes.insert(0, "Interrupted.")
    if OUTPUT_GUARD_MARKER in got.stdout or OUTPUT_GUARD_MARKER in got.stderr:
        got.truncated = True
        notes.append("The kernel dropped stream output over KERNEL_MCP_MAX_OUTPUT_BYTES.")


def _report(
    execution: Execution,
    got: _Collected,
    stream_limit: int,
    file: str | None,
    session_id: str | None,
    notebook: str | None,
) -> tuple[RunReport, str]:
    """The report and text block with each stream, display, result and error cut to
    ``stream_limit`` characters."""
    stdout, cut_out = _cut(got.stdout, stream_limit)
    stderr, cut_err = _cut(got.stderr, stream_limit)
    display_text = [(m, _cut(strip_ansi(t), stream_limit)[0]) for m, t in got.displays]
    result = got.result
    result_text = _cut(strip_ansi(result), stream_limit)[0] if result is not None else None
    error, cut_error = _error_info(execution.error, stream_limit)
    cut_notes = []
    if cut_out:
        cut_notes.append(f"stdout: {cut_out} characters cut from the middle.")
    if cut_err:
        cut_notes.append(f"stderr: {cut_err} characters cut from the middle.")
    if cut_error:
        cut_notes.append(f"error: {cut_error} characters cut from the middle.")
    truncated = bool(got.truncated or cut_out or cut_err or cut_error)
    if truncated and notebook:
        cut_notes.append(f"The full output is in the notebook {notebook}.")
    report = RunReport(
        status=execution.status,
        stdout=stdout,
        stderr=stderr,
        result=result_text,
        error=error,
        images=len(got.images),
        truncated=truncated,
        duration_s=execution.duration_s,
        execution_count=execution.execution_count,
        mime_types=got.mime_types,
        timeout_s=execution.timeout_s,
        file=file,
        session_id=session_id,
        notebook=notebook,
        notes=got.notes + cut_notes,
    )
    return report, _text_block(report, display_text)


def _error_info(error: dict[str, Any] | None, limit: int) -> tuple[ErrorInfo | None, int]:
    """The error as shown in a reply, evalue and traceback cut like a stream."""
    if error is None:
        return None, 0
    evalue, cut_value = _cut(str(error.get("evalue", "")), limit)
    traceback, cut_tb = _cut(strip_ansi("\n".join(error.get("traceback", []))), limit)
    info = ErrorInfo(ename=str(error.get("ename", "")), evalue=evalue, traceback=traceback)
    return info, cut_value + cut_tb


def _text_block(report: RunReport, displays: list[tuple[list[str], str]]) -> str:
    head = [f"status: {report.status}"]
    if report.file:
        head.append(report.file)
    if report.execution_count is not None:
        head.append(f"In [{report.execution_count}]")
    head.append(f"{report.duration_s:.3f} s")
    if report.session_id:
        head.append(f"session {report.session_id}")
    lines = [" · ".join(head)]
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.stdout:
        lines += ["--- stdout ---", report.stdout.rstrip("\n")]
    if report.stderr:
        lines += ["--- stderr ---", report.stderr.rstrip("\n")]
    for mimes, text in displays:
        lines += [f"--- display ({', '.join(mimes)}) ---", text.rstrip("\n")]
    if report.result is not None:
        lines += ["--- result ---", report.result.rstrip("\n")]
    if report.error is not None:
        lines += ["--- error ---", report.error.traceback.rstrip("\n")]
    if report.images:
        lines.append(f"[{report.images} image(s) follow]")
    return "\n".join(lines)


# -- run_notebook -------------------------------------------------------------------

#: A notebook reply lists at most this many cells: the first half and the last half.
MAX_LISTED_CELLS = 200


@dataclass(slots=True)
class NotebookReply:
    text: str
    report: NotebookReport
    is_error: bool


def render_notebook(
    run: NotebookRun,
    limits: ReplyLimits,
    *,
    source: str,
    path: str | None,
    uri: str | None,
    session_id: str | None = None,
    notes: list[str] | None = None,
) -> NotebookReply:
    """The run_notebook reply, within ``max_reply_bytes`` however many cells ran."""
    notes = list(notes or [])
    shown = run.cells
    truncated = False
    if len(shown) > MAX_LISTED_CELLS:
        half = MAX_LISTED_CELLS // 2
        kept = shown[:half] + shown[-half:]
        failed = [c for c in shown[half:-half] if c.index == run.failed_index]
        shown = sorted(kept + failed, key=lambda c: c.index)
        truncated = True
        notes.append(
            f"{len(run.cells) - len(shown)} of {len(run.cells)} cells are not listed "
            f"(the first and last {half} are); the executed copy has them all."
        )
    budget = limits
    while True:
        failed_reply = render(run.failed, budget) if run.failed is not None else None
        report = NotebookReport(
            status=run.status,
            notebook=source,
            path=path,
            uri=uri,
            duration_s=run.duration_s,
            cells=[
                CellReport(index=c.index, status=c.status, duration_s=c.duration_s) for c in shown
            ],
            cells_total=len(run.cells),
            failed_cell=run.failed_index,
            error=failed_reply.report if failed_reply else None,
            truncated=truncated or bool(failed_reply and failed_reply.report.truncated),
            session_id=session_id,
            notes=notes,
        )
        lines = [f"status: {run.status} · {source} · {run.duration_s:.2f} s"]
        if uri:
            lines.append(f"executed copy: {uri}")
        lines += [f"note: {n}" for n in notes]
        lines += [f"cell {c.index}: {c.status} ({c.duration_s:.3f} s)" for c in shown]
        if failed_reply is not None:
            lines += [f"--- cell {run.failed_index} output ---", failed_reply.text]
        text = "\n".join(lines)
        size = len(text.encode("utf-8")) + len(report.model_dump_json().encode("utf-8"))
        if size <= limits.max_reply_bytes or budget.max_stream_chars <= 256:
            return NotebookReply(text=text, report=report, is_error=run.status != "ok")
        # The failing cell's output shares the budget with the cell list: shrink it.
        budget = ReplyLimits(
            max_stream_chars=budget.max_stream_chars // 4,
            max_images=0,
            max_image_bytes=budget.max_image_bytes,
            max_reply_bytes=max(1024, budget.max_reply_bytes // 4),
        )


# -- list_files -----------------------------------------------------------------------


def render_file_list(listing: FileListing, limits: ReplyLimits) -> FileList:
    """The list_files reply: the listing, cut to ``max_reply_bytes`` if the names are long."""
    notes = [f"Listing incomplete: {listing.reason}."] if listing.reason else []
    if listing.not_utf8:
        notes.append(
            f"{listing.not_utf8} matching name(s) are not UTF-8 and were left out: no reply "
            "can carry them. Rename them from code, e.g. os.rename(b'bad\\xff.py', 'good.py')."
        )
    files, size = [], 256 + sum(len(n) for n in notes)
    for name in listing.files:
        # A JSON string of the name in the structured content, and a line in the text.
        size += 2 * len(name.encode("utf-8")) + 8
        if size > limits.max_reply_bytes:
            notes.append(
                f"{len(listing.files) - len(files)} more names left out to keep the reply "
                "under KERNEL_MCP_MAX_REPLY_BYTES."
            )
            break
        files.append(name)
    truncated = listing.truncated or len(files) < len(listing.files)
    return FileList(
        files=files,
        projects_dir=".",
        truncated=truncated,
        not_utf8=listing.not_utf8,
        notes=notes,
    )


# -- read_file ------------------------------------------------------------------------

#: read_file shows at most this many lines per call.
MAX_READ_LINES = 2000


def render_file_text(
    path: str, source: str, offset: int, limit: int, limits: ReplyLimits
) -> FileText:
    """Lines ``offset`` … ``offset + limit - 1`` of a file, numbered, within the reply caps."""
    lines = source.splitlines()
    first = max(1, int(offset))
    count = max(1, min(int(limit), MAX_READ_LINES))
    shown: list[str] = []
    size = 0
    budget = min(limits.max_stream_chars * 4, limits.max_reply_bytes // 3)
    last = first - 1
    for number in range(first, min(len(lines), first + count - 1) + 1):
        line = lines[number - 1]
        if len(line) > 2000:
            line = line[:2000] + f" […{len(line) - 2000} characters cut]"
        entry = f"{number}\t{line}"
        if size + len(entry) + 1 > budget and shown:
            break
        shown.append(entry)
        size += len(entry) + 1
        last = number
    return FileText(
        path=path,
        text="\n".join(shown),
        first_line=first,
        last_line=last,
        total_lines=len(lines),
        truncated=last < len(lines),
    )
