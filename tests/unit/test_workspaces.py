"""Specification of ``kernel_mcp.files.workspaces``: a projects folder per principal, and its cap.

No kernel runs here: the folders are real, the runs that write to them are stood in
for by a measuring function and events.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kernel_mcp.config import load_settings
from kernel_mcp.errors import ConfigError, QuotaExceeded
from kernel_mcp.files.workspaces import (
    MIB,
    QuotaWatch,
    Usage,
    UsageLedger,
    Workspaces,
    measure,
)
from kernel_mcp.principals import principal_of
from kernel_mcp.tasks import TaskOwner


# -- principals ------------------------------------------------------------------------
def test_a_bare_token_names_its_principal_after_a_hash_that_does_not_change() -> None:
    name, token = principal_of("s3cret-token")
    assert token == "s3cret-token"
    assert name.startswith("token-") and len(name) == len("token-") + 10
    assert principal_of("s3cret-token") == (name, token)
    assert principal_of("another-token")[0] != name
    assert "s3cret" not in name


def test_name_colon_token_names_the_principal() -> None:
    assert principal_of("alice:abc123") == ("alice", "abc123")
    assert principal_of("x:y:z") == ("x", "y:z")


def test_the_principals_do_not_depend_on_the_order_of_the_tokens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "projects").mkdir()
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("KERNEL_MCP_TOKEN", "first,bob:second")
    forward = dict(load_settings().principals)
    monkeypatch.setenv("KERNEL_MCP_TOKEN", "bob:second,first")
    assert dict(load_settings().principals) == forward
    assert forward["bob"] == "second"


def test_two_tokens_that_name_one_principal_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "projects").mkdir()
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("KERNEL_MCP_TOKEN", "alice:one,alice:two")
    with pytest.raises(ConfigError, match=r"KERNEL_MCP_TOKEN.*'alice'"):
        load_settings()


@pytest.mark.parametrize(
    ("tokens", "shared", "per_principal"),
    [
        ("", False, False),
        ("only-one", False, False),
        ("a,b", False, True),
        ("a,b", True, False),
    ],
)
def test_folders_are_per_principal_only_with_several_principals_and_no_sharing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokens: str, shared: bool, per_principal: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "projects").mkdir()
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("KERNEL_MCP_TOKEN", tokens)
    monkeypatch.setenv("KERNEL_MCP_PROJECTS_SHARED", str(shared).lower())
    assert load_settings().per_principal_projects is per_principal


# -- folders ----------------------------------------------------------------------------
def test_each_principal_gets_a_folder_of_its_own_below_the_projects_folder(
    tmp_path: Path,
) -> None:
    spaces = Workspaces(tmp_path, per_principal=True)
    alice, bob = spaces.folder("alice"), spaces.folder("bob")
    assert alice == tmp_path / "alice" and bob == tmp_path / "bob"
    assert alice.is_dir() and bob.is_dir()
    assert (alice / "README.md").is_file()
    assert alice.stat().st_mode & 0o077 == 0
    assert spaces.all_folders() == [alice, bob]


def test_a_shared_folder_is_everyone_s(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path, per_principal=False)
    assert spaces.folder("alice") == spaces.folder("bob") == spaces.folder(None) == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_a_principal_s_folder_keeps_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "main.py").write_text("print(1)\n")
    spaces = Workspaces(tmp_path, per_principal=True)
    assert (spaces.folder("alice") / "main.py").read_text() == "print(1)\n"
    assert not (tmp_path / "alice" / "README.md").exists()


# -- measuring ----------------------------------------------------------------------------
def test_measure_counts_allocated_bytes_hard_links_once_and_follows_no_symlink(
    tmp_path: Path,
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(os.urandom(256 * 1024))
    os.link(tmp_path / "sub" / "data.bin", tmp_path / "again.bin")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(os.urandom(1024 * 1024))
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    usage = measure(tmp_path)
    assert usage.complete
    assert 256 * 1024 <= usage.bytes < 512 * 1024


def test_measure_survives_names_that_are_not_text_and_stops_at_its_bound(
    tmp_path: Path,
) -> None:
    os.mkdir(os.fsencode(tmp_path) + b"/bad-\xff-dir")
    with open(os.fsencode(tmp_path) + b"/bad-\xff-dir/f\xfe.txt", "wb") as file:
        file.write(b"x" * 5000)
    for i in range(20):
        (tmp_path / f"f{i}").write_text("x")
    assert measure(tmp_path).bytes >= 5000
    bounded = measure(tmp_path, max_entries=5)
    assert not bounded.complete


def test_write_room_is_refused_past_the_cap_with_what_to_do(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path, per_principal=True, quota_bytes=1 * MIB)
    folder = spaces.folder("alice")
    (folder / "big.bin").write_bytes(os.urandom(900 * 1024))
    spaces.check_room("alice", 50 * 1024)
    with pytest.raises(QuotaExceeded, match=r"of its 1 MiB cap .*Delete files"):
        spaces.check_room("alice", 200 * 1024)
    # Replacing a file by a smaller one always fits; other principals have their own room.
    spaces.check_room("alice", 100 * 1024, replacing=900 * 1024)
    spaces.check_room("bob", 1000 * 1024)


def test_no_cap_means_no_measuring(tmp_path: Path) -> None:
    spaces = Workspaces(tmp_path, quota_bytes=0)
    (tmp_path / "big.bin").write_bytes(b"x" * 4096)
    spaces.check_room(None, 10**12)


# -- watching a run ---------------------------------------------------------------------
@pytest.fixture
async def tasks() -> AsyncIterator[TaskOwner]:
    owner = TaskOwner("test")
    yield owner
    await owner.close(grace=None)


class Growing:
    """Stands in for a folder a run writes to: each measurement returns the next size."""

    def __init__(self, *sizes: int) -> None:
        self.sizes = list(sizes)
        self.loop = asyncio.get_running_loop()
        self.all_measured = asyncio.Event()
        """Set once every size was returned (measurements run in a thread)."""

    def __call__(self, folder: Path) -> Usage:
        size = self.sizes.pop(0) if len(self.sizes) > 1 else self.sizes[0]
        if len(self.sizes) == 1 and size == self.sizes[0]:
            self.loop.call_soon_threadsafe(self.all_measured.set)
        return Usage(size)


def watching(
    folder: Path, sizes: Growing, stop: Callable[[], Awaitable[None]], tasks: TaskOwner
) -> QuotaWatch:
    """A watch over ``folder`` with a 10 MiB cap whose every measurement is ``sizes``'
    next one, the first (the run's start) included."""
    ledger = UsageLedger(tasks, measure_with=sizes)
    return QuotaWatch(
        folder, quota_bytes=10 * MIB, stop=stop, ledger=ledger, interval=0, measure_with=sizes
    )


async def test_a_run_that_grows_the_folder_past_its_cap_is_stopped_once(
    tmp_path: Path, tasks: TaskOwner
) -> None:
    stopped = asyncio.Event()
    calls = []

    async def stop() -> None:
        calls.append(1)
        stopped.set()

    sizes = Growing(2 * MIB, 5 * MIB, 11 * MIB)
    watch = watching(tmp_path, sizes, stop, tasks)
    async with watch:
        await asyncio.wait_for(stopped.wait(), 10)
    assert watch.tripped and calls == [1]
    assert watch.peak_bytes == 11 * MIB
    assert any("was stopped" in note and "10 MiB" in note for note in watch.notes())


async def test_a_run_that_stays_under_the_cap_is_left_alone(
    tmp_path: Path, tasks: TaskOwner
) -> None:
    async def stop() -> None:
        raise AssertionError("stopped a run under its cap")

    sizes = Growing(1 * MIB, 2 * MIB, 3 * MIB)
    watch = watching(tmp_path, sizes, stop, tasks)
    async with watch:
        await asyncio.wait_for(sizes.all_measured.wait(), 10)
    assert not watch.tripped and watch.notes() == []


async def test_over_the_cap_a_run_may_delete_files_but_not_add_any(
    tmp_path: Path, tasks: TaskOwner
) -> None:
    stopped = asyncio.Event()

    async def stop() -> None:
        stopped.set()

    shrinking = Growing(20 * MIB, 15 * MIB, 12 * MIB)
    watch = watching(tmp_path, shrinking, stop, tasks)
    async with watch:
        await asyncio.wait_for(shrinking.all_measured.wait(), 10)
    assert watch.over_at_start and not watch.tripped
    assert any("may delete files, not add any" in note for note in watch.notes())

    growing = Growing(20 * MIB, 21 * MIB)
    watch = watching(tmp_path, growing, stop, tasks)
    async with watch:
        await asyncio.wait_for(stopped.wait(), 10)
    assert watch.tripped


async def test_without_a_cap_nothing_is_measured(tmp_path: Path, tasks: TaskOwner) -> None:
    def never(folder: Path) -> Usage:
        raise AssertionError("measured without a cap")

    async def stop() -> None:
        raise AssertionError("stopped without a cap")

    ledger = UsageLedger(tasks, measure_with=never)
    async with QuotaWatch(
        tmp_path, quota_bytes=0, stop=stop, ledger=ledger, measure_with=never
    ) as watch:
        pass
    assert watch.notes() == []


# -- the ledger: a run starts from the last measurement -----------------------------------
class Counting:
    """A measuring function that counts its walks and returns ``size`` (changeable)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.walks = 0

    def __call__(self, folder: Path) -> Usage:
        self.walks += 1
        return Usage(self.size)


async def never_stop() -> None:
    raise AssertionError("stopped a run under its cap")


async def test_only_a_workspaces_first_run_walks_the_folder_before_it_begins(
    tmp_path: Path, tasks: TaskOwner
) -> None:
    walk = Counting(3 * MIB)
    ledger = UsageLedger(tasks, measure_with=walk)

    def watch() -> QuotaWatch:
        quota = 10 * MIB
        return QuotaWatch(
            tmp_path, quota_bytes=quota, stop=never_stop, ledger=ledger, interval=3600
        )

    async with watch() as first:
        assert walk.walks == 1 and first.start_bytes == 3 * MIB
    # The run's end asks for a measurement; it runs after the block, not inside it.
    walk.size = 4 * MIB
    async with watch() as second:
        # Begun from the measurement taken after the first run ended.
        assert second.start_bytes == 4 * MIB
    assert walk.walks == 2


async def test_a_run_that_ended_over_the_cap_leaves_the_next_run_over_at_start(
    tmp_path: Path, tasks: TaskOwner
) -> None:
    walk = Counting(1 * MIB)
    ledger = UsageLedger(tasks, measure_with=walk)
    quota = 10 * MIB
    async with QuotaWatch(
        tmp_path, quota_bytes=quota, stop=never_stop, ledger=ledger, interval=3600
    ):
        walk.size = 12 * MIB  # written just before the run ended, between measurements
    async with QuotaWatch(
        tmp_path, quota_bytes=quota, stop=never_stop, ledger=ledger, interval=3600
    ) as after:
        assert after.over_at_start and after.start_bytes == 12 * MIB


async def test_a_run_waiting_on_a_measurement_stopped_at_shut_down_walks_itself(
    tmp_path: Path,
) -> None:
    first_walk = threading.Event()
    release = threading.Event()

    def walk(folder: Path) -> Usage:
        if not first_walk.is_set():
            first_walk.set()
            release.wait(10)
            return Usage(5 * MIB)
        return Usage(6 * MIB)

    owner = TaskOwner("shutting down")
    ledger = UsageLedger(owner, measure_with=walk)
    ledger.remeasure(tmp_path)
    await asyncio.to_thread(first_walk.wait, 10)
    waiting = asyncio.create_task(ledger.size(tmp_path))
    await owner.close()  # cancels the measurement the run is waiting on
    release.set()
    # Not a CancelledError: the run was not cancelled, its measurement was; it walks.
    assert await asyncio.wait_for(waiting, 10) == 6 * MIB


async def test_the_walk_after_a_run_waits_and_a_run_that_begins_sooner_walks_itself(
    tmp_path: Path,
) -> None:
    walk = Counting(1 * MIB)
    tasks = TaskOwner("an hour's delay")
    ledger = UsageLedger(tasks, measure_with=walk, delay=3600)
    assert await ledger.size(tmp_path) == 1 * MIB and walk.walks == 1
    walk.size = 2 * MIB
    ledger.remeasure(tmp_path)  # a run ended; the walk is an hour away
    assert walk.walks == 1
    # The figure is stale: the next run walks now rather than start from it.
    assert await ledger.size(tmp_path) == 2 * MIB and walk.walks == 2
    assert await ledger.size(tmp_path) == 2 * MIB and walk.walks == 2
    await tasks.close()  # the delayed walk is cancelled, not waited for
