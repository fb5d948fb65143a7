"""Runs that outlive the call that started them.

A *background* run (``background=true`` on run_python, run_code, run_notebook)
replies at once with its run id and goes on as a task the :class:`RunRegistry`
owns; ``get_run`` reads what it printed so far (incrementally, from an offset)
and its full reply once it is done, ``cancel_run`` stops it. A foreground run
on a 2026-07-28 connection whose code calls ``input()`` is *parked* the same
way while the client asks the user: the call returns an input request, and the
client's retry finds the run again by its id.

Runs belong to the principal that started them; another principal's run id is
reported like an unknown one. A finished run's result is kept for
``retention`` seconds, then dropped; its id then says when. Each run leaves a
small marker file (``<notebooks>/.runs/<id>.json``) so that, after a restart,
a run the old process never finished is reported as lost, never as running.
With replicas, a run lives in the replica that started it: ``get_run`` on
another replica reports it unknown (use sticky routing for background runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from kernel_mcp.errors import KernelMCPError, RunGone, RunNotFound
from kernel_mcp.runner.questions import Question
from kernel_mcp.tasks import TaskOwner, stop_task, wait_within

__all__ = [
    "RUNS_MARKERS",
    "InputRequest",
    "Run",
    "RunHooks",
    "RunLog",
    "RunRegistry",
    "RunState",
]

log = logging.getLogger(__name__)

RunState = Literal["running", "waiting_input", "done", "failed", "cancelled"]
#: Text of stdout and stderr a run keeps for get_run (older text is trimmed).
LOG_CHARS = 4 * 1024 * 1024
#: The notebooks folder's sub-folder of run markers (one sub-folder per replica).
RUNS_MARKERS = ".runs"
#: Tombstones kept for dropped and lost runs.
TOMBSTONES = 10_000


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RunLog:
    """What a run printed (stdout and stderr, interleaved as they came), with offsets.

    Offsets count characters from the run's start, so a reader that passes back
    the ``next`` offset it was given sees every character once. Past ``limit``
    the oldest text is trimmed; a reader behind it is told how much it missed.
    """

    def __init__(self, limit: int = LOG_CHARS) -> None:
        self.limit = limit
        self._parts: deque[str] = deque()
        self._start = 0
        self._end = 0

    @property
    def end(self) -> int:
        return self._end

    def add(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        self._end += len(text)
        while self._end - self._start > self.limit and len(self._parts) > 1:
            self._start += len(self._parts.popleft())

    def read(self, since: int, limit: int) -> tuple[str, int, int]:
        """(text after ``since``, at most ``limit`` characters; the next offset; chars missed)."""
        since = max(0, min(since, self._end))
        missed = max(0, self._start - since)
        begin = max(since, self._start)
        # Reads are rare (a poll a second at most): joining the kept parts is fine.
        kept = "".join(self._parts)
        chunk = kept[begin - self._start : begin - self._start + max(0, limit)]
        return chunk, begin + len(chunk), missed


@dataclass
class InputRequest:
    """The kernel is waiting in ``input()``; ``answer`` gets the text (or None: no answer)."""

    id: str
    question: Question
    answer: asyncio.Future[str | None]

    @property
    def prompt(self) -> str:
        """The program's prompt, cleaned (see kernel_mcp.runner.questions)."""
        return self.question.prompt

    @property
    def password(self) -> bool:
        return self.question.password


@dataclass
class RunHooks:
    """What a run's execution reports into its :class:`Run` (see ``Kernel.execute``)."""

    run: Run

    def output(self, name: str, text: str) -> None:
        self.run.log.add(text)
        self.run.notify()

    async def ask(self, question: Question) -> str | None:
        """An input request, answered by whoever reads the run (a retried tool call)."""
        loop = asyncio.get_running_loop()
        request = InputRequest(secrets.token_hex(8), question, loop.create_future())
        self.run.pending_input = request
        self.run.notify()
        try:
            return await request.answer
        finally:
            self.run.pending_input = None
            self.run.notify()


@dataclass(eq=False)
class Run:
    """One run that may outlive its call."""

    id: str
    owner: str | None
    tool: str
    label: str
    """What ran: the file, the notebook, or "code"."""
    session_id: str | None
    background: bool
    timeout: float | None = None
    """The time limit the caller asked for (None: the default)."""
    started_at: datetime = field(default_factory=_now)
    started_mono: float = field(default_factory=time.monotonic)
    ended_at: datetime | None = None
    ended_mono: float | None = None
    log: RunLog = field(default_factory=RunLog)
    pending_input: InputRequest | None = None
    outcome: Any = None
    """What the work returned (a RunOutcome or a NotebookOutcome), once done."""
    failure: str | None = None
    """Why the run could not run (a refusal or a kernel failure), once failed."""
    cancelled: bool = False
    task: asyncio.Task[Any] | None = field(default=None, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    """The registry's monotonic clock (tests inject one)."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def state(self) -> RunState:
        if self.task is None or not self.task.done():
            return "waiting_input" if self.pending_input is not None else "running"
        if self.cancelled:
            return "cancelled"
        return "failed" if self.failure is not None else "done"

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    @property
    def elapsed_s(self) -> float:
        end = self.ended_mono if self.ended_mono is not None else self.clock()
        return round(end - self.started_mono, 3)

    def notify(self) -> None:
        """Wake every reader waiting for something new."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for new output, an input request or the end."""
        if self.done or timeout <= 0:
            return self.done
        event = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_within(event.wait(), timeout)
        return True


class RunRegistry:
    """Every run of this process that may outlive its call, and their tombstones.

    Args:
        retention: seconds a finished run's result is kept.
        markers: folder for the per-run marker files (None: no markers).
        replica: this replica's name, when replicas share sessions (errors name it).
        clock: the monotonic clock runs are timed and retained by (tests inject one).
    """

    def __init__(
        self,
        *,
        retention: float,
        markers: Path | None,
        replica: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retention = retention
        self.clock = clock
        self.markers = markers
        self.replica = replica
        self._runs: dict[str, Run] = {}
        self._gone: OrderedDict[str, tuple[str | None, str, Literal["lost", "dropped"]]] = (
            OrderedDict()
        )
        self._tasks = TaskOwner("runs")
        """Every run's task, and the reaper."""
        self._reaper: asyncio.Task[None] | None = None
        self._started_at = _now()

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Report the runs a previous process left unfinished as lost; start the reaper."""
        await asyncio.to_thread(self._load_markers)
        if self._reaper is None:
            self._reaper = self._tasks.spawn(self._reap_forever(), name="reap")

    async def close(self) -> None:
        """Cancel every run still going (their kernels are interrupted) and wait for them."""
        stopping = [run for run in self._runs.values() if not run.done]
        for run in stopping:
            run.cancelled = True
        await self._tasks.close()  # the reaper, and every run still going
        self._reaper = None
        for run in stopping:
            self._write_marker(run, ended=True, why="was cancelled when the server stopped")

    # -- runs ---------------------------------------------------------------------------
    def start_run(
        self,
        *,
        owner: str | None,
        tool: str,
        label: str,
        session_id: str | None,
        background: bool,
        work: Callable[[RunHooks], Awaitable[Any]],
        timeout: float | None = None,
    ) -> Run:
        """Start ``work`` as a run this registry owns; it ends by itself or by ``cancel``."""
        run = Run(
            id="run-" + secrets.token_urlsafe(12),
            owner=owner,
            tool=tool,
            label=label,
            session_id=session_id,
            background=background,
            timeout=timeout,
            started_mono=self.clock(),
            clock=self.clock,
        )
        # Spawned first: it starts at the next turn of the loop, and a registry that is
        # closing refuses it before anything is registered.
        run.task = self._tasks.spawn(self._drive(run, work), name=f"run {run.id}")
        self._runs[run.id] = run
        self._write_marker(run, ended=False)
        return run

    async def _drive(self, run: Run, work: Callable[[RunHooks], Awaitable[Any]]) -> Any:
        try:
            run.outcome = await work(RunHooks(run))
            return run.outcome
        except asyncio.CancelledError:
            run.cancelled = True
            raise
        except KernelMCPError as exc:
            run.failure = str(exc)
            return None
        except Exception as exc:  # the run's own bug: reported on the run, not lost
            log.exception("run %s failed", run.id)
            run.failure = f"{type(exc).__name__}: {exc}"
            return None
        finally:
            run.ended_at = _now()
            run.ended_mono = self.clock()
            run.notify()
            self._write_marker(run, ended=True)

    def get(self, owner: str | None, run_id: str) -> Run:
        """The caller's run.

        Raises:
            RunNotFound: unknown, or another principal's.
            RunGone: dropped after its retention, or lost to a restart (says when).
        """
        run = self._runs.get(run_id)
        if run is not None and run.owner == owner:
            return run
        gone = self._gone.get(run_id)
        if run is None and gone is not None and gone[0] == owner:
            raise RunGone(f"Run {run_id!r} {gone[1]}.", gone[2])
        raise RunNotFound(run_id, self.replica)

    def owned(self, owner: str | None) -> list[Run]:
        return sorted(
            (r for r in self._runs.values() if r.owner == owner), key=lambda r: r.started_mono
        )

    def running_in(self, session_id: str) -> Run | None:
        """The background run a session is busy with, if any."""
        for run in self._runs.values():
            if run.session_id == session_id and not run.done and run.background:
                return run
        return None

    async def cancel(self, run: Run) -> None:
        """Stop a run: its kernel is interrupted, then killed after the grace period."""
        if run.task is None or run.task.done():
            return
        run.cancelled = True
        if run.pending_input is not None and not run.pending_input.answer.done():
            run.pending_input.answer.set_result(None)
        await stop_task(run.task)

    def forget(self, run: Run) -> None:
        """Drop a finished run at once (a foreground run whose reply was delivered)."""
        if run.done:
            self._runs.pop(run.id, None)
            self._remove_marker(run.id)

    # -- retention --------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        period = max(0.05, min(self.retention / 4, 60.0))
        while True:
            await asyncio.sleep(period)
            self.reap()

    def reap(self) -> None:
        """Drop the finished runs older than the retention, leaving tombstones."""
        now = self.clock()
        for run in list(self._runs.values()):
            if run.ended_mono is None or now - run.ended_mono < self.retention:
                continue
            del self._runs[run.id]
            ended = run.ended_at.isoformat(timespec="seconds") if run.ended_at else "?"
            self._bury(
                run.id,
                run.owner,
                f"finished at {ended}; its result was dropped at "
                f"{_now().isoformat(timespec='seconds')} "
                f"(KERNEL_MCP_RUN_RETENTION={self.retention:g} s)",
                "dropped",
            )
            self._remove_marker(run.id)

    def _bury(
        self, run_id: str, owner: str | None, how: str, kind: Literal["lost", "dropped"]
    ) -> None:
        self._gone[run_id] = (owner, how, kind)
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)

    # -- markers (what a restart needs to know) ---------------------------------------
    def _marker(self, run_id: str) -> Path | None:
        return self.markers / f"{run_id}.json" if self.markers is not None else None

    def _write_marker(self, run: Run, *, ended: bool, why: str | None = None) -> None:
        path = self._marker(run.id)
        if path is None:
            return
        record = {
            "id": run.id,
            "owner": run.owner,
            "tool": run.tool,
            "label": run.label,
            "started": run.started_at.isoformat(timespec="seconds"),
            "ended": ended,
            "why": why,
        }
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # a broken notebooks folder must not stop a run
            log.debug("run marker %s not written: %s", run.id, exc)

    def _remove_marker(self, run_id: str) -> None:
        path = self._marker(run_id)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def _load_markers(self) -> None:
        if self.markers is None or not self.markers.is_dir():
            return
        restarted = self._started_at.isoformat(timespec="seconds")
        for path in sorted(self.markers.glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                run_id, owner = str(record["id"]), record.get("owner")
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if record.get("ended"):
                why = record.get("why") or "finished before the server restarted"
                how = (
                    f"was started at {record.get('started')} and {why}; its result went "
                    "with the previous server process"
                )
            else:
                how = (
                    f"was started at {record.get('started')} and lost when the server "
                    f"restarted (at {restarted}): it did not finish, and will not"
                )
            self._bury(run_id, owner, how, "lost")
            with contextlib.suppress(OSError):
                path.unlink()
