"""What one execution is: its status, its result, and the callbacks it reports through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from nbformat import NotebookNode

__all__ = [
    "Execution",
    "OutputCallback",
    "ProgressCallback",
    "Status",
    "StdinHandler",
]

Status = Literal["ok", "error", "timeout", "kernel_died", "interrupted"]
ProgressCallback = Callable[[float, str], Awaitable[None]]
OutputCallback = Callable[[str, str], None]
"""Called with (stream name, text) for every stream message a run sends."""
StdinHandler = Callable[[str, bool], Awaitable[str | None]]
"""Answers the kernel's ``input()``: (prompt, password) -> the text, or None for no answer
(the kernel's ``input()`` then raises EOFError)."""


@dataclass(slots=True)
class Execution:
    """What one execution produced, in Jupyter's own output format."""

    status: Status
    outputs: list[NotebookNode]
    execution_count: int | None
    error: NotebookNode | None
    started_at: datetime
    ended_at: datetime
    duration_s: float
    timeout_s: float
    dropped_chars: int = 0
    dropped_outputs: int = 0
    death: str | None = None
    """For kernel_died: how the kernel ended."""
    kernel_replaced: bool = False
    """The kernel was killed (timeout ignored SIGINT, or it died); its state is gone."""
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_chars or self.dropped_outputs)
