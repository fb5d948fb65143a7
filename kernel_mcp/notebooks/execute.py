"""Running a notebook cell by cell, papermill-style, in one kernel."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from nbformat import NotebookNode

from kernel_mcp.kernels.execution import Execution, OutputCallback, StdinHandler
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.setup import NO_STDIN_MESSAGE
from kernel_mcp.notebooks.model import code_cell

__all__ = ["CellStatus", "CellSummary", "NotebookRun", "execute_notebook"]


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



async def execute_notebook(
    kernel: Kernel,
    nb: NotebookNode,
    *,
    cell_timeout: float,
    total_timeout: float,
    grace: float,
    allow_errors: bool,
    on_output: OutputCallback | None = None,
    stdin: StdinHandler | None = None,
    no_stdin: str = NO_STDIN_MESSAGE,
) -> NotebookRun:
    """Run the code cells of ``nb`` in order, in place, in ``kernel``.

    ``stdin`` answers the cells' ``input()``; without it, ``input()`` says ``no_stdin``.

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
            cell.source,
            timeout=min(cell_timeout, remaining),
            grace=grace,
            on_output=on_output,
            stdin=stdin,
            no_stdin=no_stdin,
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
