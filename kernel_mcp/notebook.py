"""Runs as notebooks: recording, durable writes, export, and running notebooks.

Cells hold outputs exactly as Jupyter stores them (the collector builds them
with ``nbformat.v4.output_from_msg``); ANSI codes stay, because JupyterLab
renders them. Writes are atomic: a temporary file in the same folder, fsync,
rename, fsync of the folder, so a server killed at any moment leaves either
the previous notebook or the new one, both valid.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_notebook

from kernel_mcp.errors import (
    FileNotFound,
    InvalidArgument,
    InvalidNotebook,
    NotebookExists,
)
from kernel_mcp.kernel import Execution, Kernel
from kernel_mcp.paths import validate_name

__all__ = [
    "CellSummary",
    "NotebookRun",
    "NotebookStore",
    "Recording",
    "code_cell",
    "execute_notebook",
    "inject_parameters",
    "notebook_for",
    "parse_notebook",
    "read_recording",
    "write_atomically",
]

SESSIONS = "sessions"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def notebook_for(kernel_info: dict[str, Any]) -> NotebookNode:
    """An empty v4 notebook whose metadata describes the kernel that ran it."""
    nb = new_notebook()
    language = dict(kernel_info.get("language_info") or {})
    name = language.get("name", "python")
    nb.metadata["kernelspec"] = {
        "name": "python3" if name == "python" else name,
        "display_name": "Python 3 (ipykernel)" if name == "python" else name,
        "language": name,
    }
    if language:
        nb.metadata["language_info"] = language
    return nb


def code_cell(source: str, execution: Execution, tool: str) -> NotebookNode:
    """A code cell holding what one execution produced."""
    cell = new_code_cell(source=source)
    cell.execution_count = execution.execution_count
    cell.outputs = copy.deepcopy(execution.outputs)
    cell.metadata["execution"] = {
        "iopub.execute_input": _iso(execution.started_at),
        "shell.execute_reply": _iso(execution.ended_at),
    }
    cell.metadata["kernel_mcp"] = {
        "tool": tool,
        "status": execution.status,
        "started": _iso(execution.started_at),
        "ended": _iso(execution.ended_at),
        "duration_s": execution.duration_s,
    }
    return cell


def write_atomically(path: Path, nb: NotebookNode) -> None:
    """Write ``nb`` to ``path`` so that a crash never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not nbformat.writes: it validates and deep-copies the whole notebook on every
    # run of a session, which grew with its length (docs/benchmarks.md). Cells are
    # built by nbformat.v4 and output_from_msg; the tests validate what is written.
    text = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def parse_notebook(text: str, name: str) -> NotebookNode:
    """Read and validate a notebook; InvalidNotebook says why it is not one."""
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidNotebook(f"{name!r} is not a valid notebook: {message[:300]}") from None
    return nb


@dataclass
class Recording:
    """One session's runs as a notebook, written after every run."""

    path: Path
    nb: NotebookNode

    def add(self, source: str, execution: Execution, tool: str) -> None:
        self.nb.cells.append(code_cell(source, execution, tool))
        self.save()

    def save(self) -> None:
        write_atomically(self.path, self.nb)

    @property
    def cells(self) -> int:
        return len(self.nb.cells)


def read_recording(path: Path, kernel_info: dict[str, Any]) -> Recording:
    """A recording as it is on disk now (another server replica may have written it).

    A missing or empty file (a crash before the first write) starts empty.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if not text.strip():
        return Recording(path=path, nb=notebook_for(kernel_info))
    # Our own atomic writes made this file: parse it without re-validating every
    # cell on every run (that cost grew with the session; docs/benchmarks.md).
    return Recording(path=path, nb=nbformat.from_dict(json.loads(text)))


def _claim(folder: Path, stem: str) -> Path:
    """Create an empty ``<stem>[-N].ipynb`` that nobody else has; O_EXCL settles races."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = folder / (f"{stem}.ipynb" if n == 1 else f"{stem}-{n}.ipynb")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            n += 1


class NotebookStore:
    """The notebooks folder: session recordings under ``sessions/``, exports at the top."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return f"notebook://{rel.removesuffix('.ipynb')}"

    def new_recording(self, name: str, kernel_info: dict[str, Any]) -> Recording:
        """A recording for a session; never reuses a file an earlier session left."""
        path = _claim(self.root / SESSIONS, name)
        recording = Recording(path=path, nb=notebook_for(kernel_info))
        recording.save()
        return recording

    def export(self, recording: Recording, name: str, *, overwrite: bool) -> Path:
        """Copy a session's notebook to ``<root>/<name>.ipynb``."""
        path = self.export_path(name)
        if path.exists() and not overwrite:
            raise NotebookExists(
                f"{path.name} exists in the notebooks folder; pass overwrite=true to replace it."
            )
        write_atomically(path, recording.nb)
        return path

    def export_path(self, name: str) -> Path:
        stem = validate_name(name.removesuffix(".ipynb"))
        path = (self.root / f"{stem}.ipynb").resolve()
        if path.parent != self.root.resolve():
            raise InvalidArgument(f"Invalid notebook name {name!r}.")
        return path

    def save_single(self, stem: str, nb: NotebookNode) -> Path:
        """Write a one-off notebook under ``runs/`` with a unique name."""
        path = _claim(self.root / "runs", stem)
        write_atomically(path, nb)
        return path

    def list(self) -> list[str]:
        """Names of every notebook in the folder, e.g. ``sessions/abc`` or ``report``."""
        names = []
        for path in sorted(self.root.rglob("*.ipynb")):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            names.append(rel.as_posix().removesuffix(".ipynb"))
        return names

    def read(self, name: str) -> str:
        """The JSON text of a notebook, by its listed name."""
        parts = name.removesuffix(".ipynb").split("/")
        if not 1 <= len(parts) <= 2:
            raise InvalidArgument(f"Invalid notebook name {name!r}.")
        for part in parts:
            validate_name(part)
        path = self.root.joinpath(*parts[:-1], f"{parts[-1]}.ipynb")
        real = path.resolve()
        if not str(real).startswith(str(self.root.resolve()) + os.sep) or not real.is_file():
            raise FileNotFound(f"No notebook {name!r}.")
        return real.read_text(encoding="utf-8")


# -- running notebooks ---------------------------------------------------------

CellStatus = Literal["ok", "error", "timeout", "kernel_died", "interrupted", "skipped", "not_run"]


@dataclass
class CellSummary:
    index: int
    status: CellStatus
    duration_s: float = 0.0


@dataclass
class NotebookRun:
    """What running a notebook produced."""

    nb: NotebookNode
    cells: list[CellSummary] = field(default_factory=list)
    failed: Execution | None = None
    failed_index: int | None = None
    status: Literal["ok", "error", "timeout", "kernel_died", "interrupted"] = "ok"
    duration_s: float = 0.0


def _json_safe(value: Any, where: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidArgument(f"Parameter {where!r} is not JSON-representable.") from None
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover
        raise InvalidArgument(f"Parameter {where!r} is not finite.")


def inject_parameters(nb: NotebookNode, parameters: dict[str, Any]) -> None:
    """Papermill's convention: a cell tagged ``injected-parameters`` after ``parameters``."""
    lines = ["# Parameters"]
    for key, value in parameters.items():
        if not key.isidentifier():
            raise InvalidArgument(f"Parameter name {key!r} is not a Python identifier.")
        _json_safe(value, key)
        lines.append(f"{key} = {_python_literal(value)}")
    cell = new_code_cell(source="\n".join(lines) + "\n")
    cell.metadata["tags"] = ["injected-parameters"]
    for index, existing in enumerate(nb.cells):
        if "parameters" in existing.get("metadata", {}).get("tags", []):
            nb.cells.insert(index + 1, cell)
            return
    nb.cells.insert(0, cell)


def _python_literal(value: Any) -> str:
    """A Python expression for a JSON value (true/false/null spelled as Python)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{k!r}: {_python_literal(v)}" for k, v in value.items()) + "}"


async def execute_notebook(
    kernel: Kernel,
    nb: NotebookNode,
    *,
    cell_timeout: float,
    total_timeout: float,
    grace: float,
    allow_errors: bool,
) -> NotebookRun:
    """Run the code cells of ``nb`` in order, in place, in ``kernel``.

    Honours the ``skip-execution`` tag; markdown and raw cells are kept as they
    are. Without ``allow_errors`` the first failing cell stops the run and the
    cells after it are marked ``not_run`` in their metadata.
    """
    run = NotebookRun(nb=nb)
    start = time.monotonic()
    stopped = False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if stopped:
            cell.metadata["kernel_mcp"] = {"status": "not_run"}
            cell.outputs, cell.execution_count = [], None
            run.cells.append(CellSummary(index, "not_run"))
            continue
        if "skip-execution" in tags:
            run.cells.append(CellSummary(index, "skipped"))
            continue
        remaining = total_timeout - (time.monotonic() - start)
        if remaining <= 0:
            remaining = 0.001
        execution = await kernel.execute(
            cell.source, timeout=min(cell_timeout, remaining), grace=grace
        )
        filled = code_cell(cell.source, execution, "run_notebook")
        cell.outputs = filled.outputs
        cell.execution_count = filled.execution_count
        cell.metadata.update(filled.metadata)
        run.cells.append(CellSummary(index, execution.status, execution.duration_s))
        if execution.status != "ok" and (not allow_errors or execution.status != "error"):
            run.status = execution.status
            run.failed, run.failed_index = execution, index
            stopped = True
        elif execution.status == "error" and run.failed is None:
            # allow_errors kept the run going; the run as a whole still failed.
            run.status = "error"
            run.failed, run.failed_index = execution, index
    run.duration_s = round(time.monotonic() - start, 4)
    return run
