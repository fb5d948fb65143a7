"""One notebook: its cells and metadata, the set-up cell, parameters, how it is written.

Cells hold outputs exactly as Jupyter stores them (the collector builds them
with ``nbformat.v4.output_from_msg``); ANSI codes stay, because JupyterLab
renders them. Writes are atomic (``files.write.write_atomically``), so a server
killed at any moment leaves either the previous notebook or the new one, both
valid.

Running a notebook is ``notebooks.execute``; where notebooks live is
``notebooks.store``; how a session's runs are recorded is ``notebooks.recording``.
"""

from __future__ import annotations

import contextlib
import json
import keyword
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_notebook
from nbformat.v4.nbbase import random_cell_id

from kernel_mcp.errors import InvalidArgument, InvalidNotebook
from kernel_mcp.files.write import write_atomically
from kernel_mcp.kernels.setup import NO_STDIN_MESSAGE
from kernel_mcp.kernels.execution import Execution, OutputCallback, StdinHandler
from kernel_mcp.kernels.kernel import Kernel

__all__ = [
    "INJECTED_TAG",
    "SETUP_TAG",
    "code_cell",
    "file_cell_source",
    "gap_cell",
    "inject_parameters",
    "notebook_for",
    "notebook_text",
    "parse_notebook",
    "setup_cell",
    "write_notebook",
]


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def notebook_for(
    kernel_info: dict[str, Any], kernelspec: Mapping[str, str] | None = None
) -> NotebookNode:
    """An empty v4 notebook whose metadata describes the kernel that ran it.

    ``kernelspec`` (name, display_name, language) is the kernelspec the run chose,
    so that Jupyter, nbclient and papermill re-run the notebook on that one;
    without it, a Python kernel is recorded as ``python3``.
    """
    nb = new_notebook()
    language = dict(kernel_info.get("language_info") or {})
    name = language.get("name", "python")
    if kernelspec is not None:
        nb.metadata["kernelspec"] = {
            "name": kernelspec["name"],
            "display_name": kernelspec.get("display_name") or kernelspec["name"],
            "language": kernelspec.get("language") or name,
        }
    else:
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
    # Not new_code_cell: it validates the cell against nbformat's schema on every
    # run, on the hot path (docs/benchmarks.md); this is the same shape.
    cell = NotebookNode(
        id=random_cell_id(),
        cell_type="code",
        metadata=NotebookNode(),
        execution_count=None,
        source=source,
        outputs=[],
    )
    cell.execution_count = execution.execution_count
    # The execution is not changed afterwards: its outputs can be shared, not copied.
    cell.outputs = list(execution.outputs)
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


def gap_cell(after: int, before: int) -> NotebookNode:
    """A note that the kernel ran code between the recorded cells ``[after]`` and ``[before]``
    (by their execution counts) that the recording does not have: a person's cells in
    JupyterLab, or, with ``after`` 0, what ran before the session attached to the kernel."""
    missed = before - after - 1
    if after == 0:
        text = (
            f"*{missed} execution(s) ran in this kernel before this session attached to it "
            f"(execution counts 1 to {before - 1}); they are not recorded here, but what they "
            "defined is visible to the cells below.*"
        )
    else:
        text = (
            f"*Someone else ran code in this kernel between cells [{after}] and [{before}] "
            f"({missed} execution(s), e.g. from JupyterLab); it is not recorded here, but what "
            "it defined or changed is visible to the cells below.*"
        )
    return NotebookNode(
        id=random_cell_id(),
        cell_type="markdown",
        metadata=NotebookNode(kernel_mcp={"unrecorded": {"after": after, "before": before}}),
        source=text,
    )


def notebook_text(nb: dict[str, Any]) -> str:
    """The JSON text of a notebook, as Jupyter writes it (sorted keys, indent 1)."""
    # Not nbformat.writes: it validates and deep-copies the whole notebook, which grew
    # with a session's length (docs/benchmarks.md). Cells are built by nbformat.v4 and
    # output_from_msg; the tests validate what is written.
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_notebook(
    path: Path, nb: dict[str, Any], *, mode: int = 0o600, durable: bool = True
) -> None:
    """Write a notebook atomically (``files.write.write_atomically``), as Jupyter writes it.

    Raises:
        OSError: the folder cannot be written (read-only, full, not a folder).
    """
    write_atomically(path, notebook_text(nb), mode=mode, durable=durable)


def parse_notebook(text: str, name: str) -> NotebookNode:
    """Read and validate a notebook; InvalidNotebook says why it is not one."""
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidNotebook(f"{name!r} is not a valid notebook: {message[:300]}") from None
    return nb


# -- re-running a recording elsewhere -------------------------------------------

#: Tag of the first cell of recordings and exports: the set-up a re-run needs.
SETUP_TAG = "kernel-mcp-setup"

_SETUP = '''\
# kernel-mcp set-up (not a recorded run): lets this notebook re-run as it was recorded.
# Runs happened in the projects folder, and run_python cells call _kmcp_file(...) to
# set __file__, sys.argv and sys.path the way `python file.py` does.
import os as _kmcp_os, sys as _kmcp_sys
for _kmcp_dir in ({absolute!r}, {relative!r}):
    if _kmcp_os.path.isdir(_kmcp_dir):
        _kmcp_os.chdir(_kmcp_dir)
        break


def _kmcp_file(path):
    """Set up a run_python cell like `python path`, from the projects folder."""
    path = _kmcp_os.path.abspath(path)
    folder = _kmcp_os.path.dirname(path)
    _kmcp_sys.argv = [path]
    if folder not in _kmcp_sys.path:
        _kmcp_sys.path.insert(0, folder)
    globals().update(__file__=path, __name__="__main__")
'''


def setup_cell(projects_dir: Path, location: Path) -> NotebookNode:
    """The first cell of a recording or export written to the folder ``location``.

    It changes to the projects folder, by its absolute path or else by its path
    relative to the notebook (the working directory nbclient, nbconvert and
    JupyterLab give a notebook's kernel), and defines ``_kmcp_file``.
    """
    relative = os.path.relpath(projects_dir, location)
    cell = new_code_cell(source=_SETUP.format(absolute=str(projects_dir), relative=relative))
    cell.id = SETUP_TAG  # the same in every rebuild: diffs show only new runs
    cell.metadata["tags"] = [SETUP_TAG]
    cell.metadata["kernel_mcp"] = {"setup": True}
    return cell


def file_cell_source(relative: str, source: str) -> str:
    """How a run_python cell is recorded: a set-up line naming the file, then the file."""
    return f"_kmcp_file({relative!r})  # run_python {relative}\n{source}"


PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def _json_safe(value: Any, where: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise InvalidArgument(
            f"Parameter {where!r} is not JSON: NaN and Infinity are not allowed."
        ) from None
    except TypeError:
        raise InvalidArgument(f"Parameter {where!r} is not JSON-representable.") from None


def inject_parameters(nb: NotebookNode, parameters: dict[str, Any]) -> None:
    """Papermill's convention: one cell tagged ``injected-parameters`` after ``parameters``.

    An ``injected-parameters`` cell the notebook already has (from an earlier
    papermill or kernel-mcp run) is replaced, so the new values win, as papermill
    does; otherwise the cell goes after the cell tagged ``parameters``, or first.

    Raises:
        InvalidArgument: a name is not an identifier, or a value is not JSON
            (NaN and Infinity are not).
    """
    lines = ["# Parameters"]
    for key, value in parameters.items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise InvalidArgument(f"Parameter name {str(key)[:80]!r} is not a Python identifier.")
        _json_safe(value, key)
        lines.append(f"{key} = {_python_literal(value)}")
    cell = new_code_cell(source="\n".join(lines) + "\n")
    cell.metadata["tags"] = [INJECTED_TAG]

    def tags(existing: NotebookNode) -> list[str]:
        return list(existing.get("metadata", {}).get("tags", []))

    for index, existing in enumerate(nb.cells):
        if INJECTED_TAG in tags(existing):
            nb.cells[index] = cell
            # A notebook injected into twice by hand: keep only the new values.
            rest = nb.cells[index + 1 :]
            nb.cells[index + 1 :] = [c for c in rest if INJECTED_TAG not in tags(c)]
            return
    for index, existing in enumerate(nb.cells):
        if PARAMETERS_TAG in tags(existing):
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
