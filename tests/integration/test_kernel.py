"""Specification of ``kernel_mcp.kernels.kernel.Kernel``, driven against real ipykernel processes.

One execution waits on the shell reply, IOPub until idle, and the kernel's
liveness. Its status is one of ok / error / timeout / kernel_died /
interrupted, and the shell reply counts: a reply saying error is an error even
when no error output was published. A timeout interrupts the kernel and kills
it only if it ignores the interrupt for ``grace`` seconds, whatever the rate of
its messages; a cancelled caller leaves the kernel to be recovered in the
background before the next execution. The output guard ``prepare`` installs
caps streams and rich outputs inside the kernel.

What can be produced on demand without a kernel (an aborted reply, a storm of queued
messages, a recovery that hangs) is specified on a scripted client in
``tests/unit/test_kernel.py``.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import kernel_mcp.kernels.guards
import kernel_mcp.kernels.setup
from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.outputs import GUARD_METADATA_KEY, OutputLimits
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from tests.kernels import run, text, value

KERNEL_SETUP_PATH = Path(kernel_mcp.kernels.guards.__file__)


@pytest.fixture(scope="module")
async def backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalBackend]:
    projects = tmp_path_factory.mktemp("kernel-projects")
    local = LocalBackend(load_settings(projects_dir=projects, pool_size=0))
    yield local
    await local.close()


@pytest.fixture(scope="module")
async def shared(backend: LocalBackend) -> AsyncIterator[list[Kernel]]:
    holder = [await backend.start()]
    yield holder
    await holder[0].shutdown(now=True)


@pytest.fixture
async def kernel(backend: LocalBackend, shared: list[Kernel]) -> Kernel:
    """A kernel shared by the tests that leave it alive (replaced if one of them failed)."""
    if not await shared[0].is_alive():
        await shared[0].shutdown(now=True)
        shared[0] = await backend.start()
    return shared[0]


@pytest.fixture
async def fresh(backend: LocalBackend) -> AsyncIterator[Kernel]:
    """A kernel of its own, for tests that end it."""
    own = await backend.start()
    yield own
    await own.shutdown(now=True)


def pid_of(kernel: Kernel) -> int:
    pid = getattr(kernel.process, "pid", None)
    assert isinstance(pid, int)
    return pid


# -- completed runs ---------------------------------------------------------------


async def test_execution_count_advances_with_each_stored_run(kernel: Kernel) -> None:
    first = await run(kernel, "1")
    second = await run(kernel, "2")
    assert first.execution_count is not None
    assert second.execution_count == first.execution_count + 1


# -- display machinery ------------------------------------------------------------
async def test_update_display_data_is_applied_to_the_displayed_output(kernel: Kernel) -> None:
    result = await run(
        kernel,
        "from IPython.display import display\n"
        "handle = display('first', display_id=True)\n"
        "handle.update('second')\n",
    )
    assert result.status == "ok"
    assert len(result.outputs) == 1
    assert result.outputs[0]["output_type"] == "display_data"
    assert result.outputs[0]["data"]["text/plain"] == "'second'"


async def test_clear_output_removes_what_came_before(kernel: Kernel) -> None:
    result = await run(
        kernel,
        "from IPython.display import clear_output, display\n"
        "print('gone')\n"
        "display('gone too')\n"
        "clear_output()\n"
        "print('after')\n",
    )
    assert result.status == "ok"
    assert text(result) == "after\n"


async def test_clear_output_wait_clears_when_the_next_output_arrives(kernel: Kernel) -> None:
    result = await run(
        kernel,
        "from IPython.display import clear_output\n"
        "print('old')\n"
        "clear_output(wait=True)\n"
        "print('new')\n",
    )
    assert result.status == "ok"
    assert text(result) == "new\n"


# -- progress ---------------------------------------------------------------------
async def test_progress_reports_the_latest_line_at_most_about_once_a_second(
    kernel: Kernel,
) -> None:
    reports: list[tuple[float, float, str]] = []

    async def progress(elapsed: float, line: str) -> None:
        reports.append((time.monotonic(), elapsed, line))

    code = (
        "import time\n"
        "for i in range(28):\n"
        "    print(f'step {i}', flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    result = await kernel.execute(code, timeout=20, grace=2, progress=progress)

    assert result.status == "ok"
    assert 1 <= len(reports) <= result.duration_s, reports
    steps = []
    for _, elapsed, line in reports:
        match = re.fullmatch(r"step (\d+)", line)
        assert match, f"progress carries the last printed line, got {line!r}"
        steps.append(int(match.group(1)))
        assert elapsed >= 1.0
    assert steps == sorted(set(steps)), "each report carries a newer line"
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(reports)]
    assert all(gap >= 0.95 for gap in gaps), gaps


# -- timeouts -------------------------------------------------------------------


# -- deaths ---------------------------------------------------------------------


async def test_a_kernel_that_breaks_message_signing_times_out_with_a_note(
    fresh: Kernel,
) -> None:
    # Every message it sends afterwards fails jupyter_client's signature check: no reply
    # and no idle can be read, so the run times out (never an exception), and says why.
    result = await fresh.execute(
        "get_ipython().kernel.session.key = b'not-the-key'", timeout=2, grace=1
    )
    assert result.status == "timeout"
    assert result.kernel_replaced
    assert fresh.unverified > 0
    assert any("signature check" in note for note in result.notes), result.notes


async def test_a_segfault_is_reported_as_killed_by_sigsegv(fresh: Kernel) -> None:
    result = await run(fresh, "import ctypes\nctypes.string_at(0)", timeout=30)

    assert result.status == "kernel_died"
    assert result.death == "killed by SIGSEGV"
    assert result.duration_s < 5
    assert result.kernel_replaced
    assert fresh.dead


# -- the shell reply's verdict ------------------------------------------------------
async def test_a_reply_saying_error_without_an_error_output_is_an_error(kernel: Kernel) -> None:
    # ipykernel cannot send this traceback (a lone surrogate): its reply says
    # "error" (UnicodeEncodeError) and no IOPub error arrives.
    # The code holds the escape, as a client would send it: the exception's
    # message then holds the lone surrogate.
    result = await run(kernel, "print('before')\nraise ValueError('err-\\udfff-end')")

    assert result.status == "error", result
    assert result.error is not None
    assert result.error["ename"] == "UnicodeEncodeError"
    assert result.error["traceback"], "a traceback the notebook can show"
    assert result.outputs[-1] is result.error, "the notebook records the error too"
    assert result.outputs[0]["text"] == "before\n"
    assert await value(kernel, "'still usable'") == "'still usable'"


# -- time limits whatever the message rate ---------------------------------------------
#: A run's reply comes within timeout + grace; this slack covers the interrupt, the
#: kill and a loaded machine. It is a correctness bound, not a speed target: without
#: it enforced, a storm holds the reply for as long as the storm lasts.
DEADLINE_SLACK = 10.0


# Messages sent straight on the kernel's IOPub socket from its IO thread, built and
# signed by hand: nothing in ipykernel (the guard included) slows or caps them.
IOPUB_STORM = r"""
import itertools, json, time
from IPython import get_ipython
_kernel = get_ipython().kernel
_session = _kernel.session
_pub = _kernel.iopub_thread.socket
_parent = json.dumps(_kernel.get_parent("shell")["header"], default=str).encode()
_content = json.dumps({"data": {"text/plain": "x"}, "metadata": {}, "transient": {}}).encode()
_ids = itertools.count()

def _message():
    header = json.dumps({
        "msg_id": f"storm-{next(_ids)}", "msg_type": "display_data",
        "session": _session.session, "username": "storm",
        "date": "2026-01-01T00:00:00.000000Z", "version": "5.3",
    }).encode()
    parts = [header, _parent, b"{}", _content]
    digest = _session.auth.copy()
    for part in parts:
        digest.update(part)
    return [b"storm", b"<IDS|MSG>", digest.hexdigest().encode(), *parts]

def _storm():
    for _ in range(2000):
        _pub.send_multipart(_message())
    _kernel.iopub_thread.schedule(_storm)

_kernel.iopub_thread.schedule(_storm)
while True:
    time.sleep(0.01)
"""


async def test_a_real_iopub_storm_bypassing_the_guard_ends_within_timeout_plus_grace(
    fresh: Kernel,
) -> None:
    await fresh.prepare([])
    timeout, grace = 2.0, 1.0
    # If the event loop were starved no asyncio timer could end this test: a thread can.
    watchdog = threading.Timer(120, os.kill, (pid_of(fresh), signal.SIGKILL))
    watchdog.start()
    try:
        result = await fresh.execute(IOPUB_STORM, timeout=timeout, grace=grace)
    finally:
        watchdog.cancel()

    assert result.status == "timeout"
    assert result.duration_s <= timeout + grace + DEADLINE_SLACK, result.duration_s
    assert len(result.outputs) == fresh.limits.max_outputs
    assert result.dropped_outputs > 0


# -- the output guard --------------------------------------------------------------
def backend_with_caps(projects: Path, limits: OutputLimits) -> LocalBackend:
    """A backend whose kernels have these caps (set before its first kernel: a forked
    kernel installs its guard before it answers anything)."""
    local = LocalBackend(load_settings(projects_dir=projects, pool_size=0))
    local.limits = limits
    return local


@pytest.fixture(scope="module")
async def small_caps(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalBackend]:
    local = backend_with_caps(
        tmp_path_factory.mktemp("small-caps"), OutputLimits(max_output_bytes=4096, max_outputs=20)
    )
    yield local
    await local.close()


@pytest.fixture
async def guarded(small_caps: LocalBackend) -> AsyncIterator[Kernel]:
    """A kernel of its own with small caps and the output guard installed."""
    own = await small_caps.start()
    await own.prepare([])
    yield own
    await own.shutdown(now=True)


def guard_totals(output: dict[str, Any]) -> dict[str, int]:
    return dict(output.get("metadata", {}).get(GUARD_METADATA_KEY) or {})


async def test_the_guard_drops_displays_over_the_cap_with_one_notice(guarded: Kernel) -> None:
    result = await run(
        guarded, "from IPython.display import display\nfor i in range(500):\n    display(i)\n"
    )

    assert result.status == "ok", result
    *kept, notice = result.outputs
    assert [o["data"]["text/plain"] for o in kept] == [str(i) for i in range(19)]
    text = notice["data"]["text/plain"]
    assert text.startswith(OUTPUT_GUARD_MARKER)
    assert "481 rich outputs over 19" in text, text
    assert guard_totals(notice)["dropped_outputs"] == 481
    assert result.truncated
    assert result.dropped_outputs == 481
    # The next run starts with a fresh budget.
    again = await run(guarded, "from IPython.display import display\ndisplay('one')")
    assert [o["data"]["text/plain"] for o in again.outputs] == ["'one'"]
    assert not again.truncated


async def test_the_guard_caps_execute_results_too(guarded: Kernel) -> None:
    await run(guarded, "get_ipython().ast_node_interactivity = 'all'")
    try:
        result = await run(guarded, "\n".join(str(i) for i in range(60)))
    finally:
        await run(guarded, "get_ipython().ast_node_interactivity = 'last_expr'")

    assert result.status == "ok", result
    results = [o for o in result.outputs if o["output_type"] == "execute_result"]
    assert len(results) == 19
    assert result.outputs[-1]["data"]["text/plain"].startswith(OUTPUT_GUARD_MARKER)
    assert result.dropped_outputs == 41


async def test_the_guard_replaces_an_oversized_display_with_a_notice(guarded: Kernel) -> None:
    result = await run(
        guarded,
        "from IPython.display import display\n"
        "display({'text/plain': 'p' * 10_000, 'text/html': 'h' * 10}, raw=True)\n"
        "display('small')\n",
    )

    assert result.status == "ok", result
    big, small = result.outputs
    assert list(big["data"]) == ["text/plain"]
    assert big["data"]["text/plain"].startswith(OUTPUT_GUARD_MARKER)
    assert "10010 characters (text/html, text/plain)" in big["data"]["text/plain"]
    assert small["data"]["text/plain"] == "'small'"
    assert result.dropped_chars >= 10_010
    assert result.truncated


async def test_updates_over_the_cap_still_leave_the_final_state(guarded: Kernel) -> None:
    result = await run(
        guarded,
        "from IPython.display import display\n"
        "handle = display('0', display_id=True)\n"
        "for i in range(1, 500):\n"
        "    handle.update(str(i))\n",
    )

    assert result.status == "ok", result
    (output,) = result.outputs
    assert output["data"]["text/plain"] == "'499'"
    assert not result.truncated, "nothing is lost: the latest update is sent at the end"


async def test_a_marker_with_quotes_and_placeholder_words_reaches_the_kernel_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "[kmcp \"LIMIT\" 'MARKER' \\ {x}:"
    monkeypatch.setattr(kernel_mcp.kernels.setup, "OUTPUT_GUARD_MARKER", marker)
    local = backend_with_caps(tmp_path, OutputLimits(max_output_bytes=1256, max_outputs=20))
    try:
        own = await local.start()
        await own.prepare([])
        result = await run(own, "print('x' * 5000)")
        await own.shutdown(now=True)
    finally:
        await local.close()

    assert result.status == "ok", result
    (stream,) = result.outputs
    assert stream["text"].startswith("x" * 1000)
    assert f"\n{marker} stdout over 1000 characters in one run" in stream["text"]


@pytest.mark.parametrize("how", ["spawned", "forked"])
async def test_the_guards_leave_no_name_in_the_user_s_namespace(
    small_caps: LocalBackend, how: str
) -> None:
    own = await (small_caps.spawn() if how == "spawned" else small_caps.start())
    try:
        await own.prepare([])
        names = "sorted(n for n in globals() if 'kmcp' in n or n in ('annotations', 'Any'))"
        assert await value(own, names) == "[]"
        flood = await run(own, "print('x' * 100_000)")  # and the guards are in force
        assert f"{OUTPUT_GUARD_MARKER} stdout over" in flood.outputs[0]["text"]
    finally:
        await own.shutdown(now=True)
