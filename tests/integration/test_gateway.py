"""Specification of ``kernel_mcp.scale.gateway``, against a real Jupyter Kernel Gateway.

A ``jupyter kernelgateway`` with an auth token runs on loopback for the whole
module. The tests drive the Kernel layer on the gateway backend, attach to a
kernel from a second backend, run the whole product (a server subprocess with
``KERNEL_MCP_GATEWAY_URL``) over two transports, and break things: a wrong
token, a gateway that is down, a gateway that restarts. At the end nothing may
be left: no kernel on the gateway, no kernel process it started.

Gateway settings the tests use (see the module docstring of kernel_mcp.scale.gateway.backend):
``KernelRestarter.time_to_dead=0.5`` so a dead kernel is noticed within half a
second (the default poll is 3 s), ``ZMQChannelsWebsocketConnection.limit_rate=False``
so a big output is not dropped by the gateway's IOPub rate limit, and
``list_kernels=True`` so the final check can list what is left.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from pydantic import SecretStr

from kernel_mcp.config import Settings, load_settings
from kernel_mcp.errors import KernelError, KernelStartFailed
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from kernel_mcp.scale.gateway.backend import LIVENESS_CACHE, GatewayBackend, GatewayProcess
from kernel_mcp.scale.gateway.protocol import GatewayClient, ws_max_size
from tests.helpers import call, client_for, running_server, structured, text_of, wait_for
from tests.kernels import run, text, value
from tests.launchers import Gateway, free_port, wait_until


def oversized_display(then: str = "") -> str:
    """Code that puts one display of 3,000,000 characters straight onto IOPub.

    Sent with the kernel's own session, past any output cap inside the kernel:
    the way a non-Python kernel, a comm or a widget may send a huge message.
    """
    return (
        "from IPython import get_ipython\n"
        "_k = get_ipython().kernel\n"
        "_k.session.send(_k.iopub_socket, 'display_data', "
        "{'data': {'text/plain': 'x' * 3_000_000}, 'metadata': {}, 'transient': {}}, "
        "parent=_k.get_parent())\n"
        f"{then}"
        "after_display = True\n"
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    left: set[str] = set()
    try:
        gw.start()
        yield gw
        # Every backend and server of this module has closed: they must have
        # deleted every kernel they started.
        wait_until(lambda: not gw.kernel_ids(), timeout=20, interval=0.1)
        left = gw.kernel_ids()
    finally:
        survivors = gw.close()
    assert not left, f"kernels left on the gateway: {left}"
    assert not survivors, f"kernel processes outlived the gateway: {survivors}"
    assert gw.seen, "the sampler saw no kernel process at all"


# -- the Kernel layer on the gateway backend -------------------------------------------
KERNEL_ENV = {
    "KERNEL_PROBE": "visible",
    "KERNEL_API_TOKEN": "looks-secret",
    "KERNEL_MCP_TOKEN": "our-own-setting",
    "PROBE_NOT_KERNEL": "not-for-the-gateway",
}


@pytest.fixture(scope="module")
def settings(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(
        projects_dir=tmp_path_factory.mktemp("gateway-projects"),
        gateway_url=gateway.url,
        gateway_token=gateway.token,
        pool_size=0,
        max_output_bytes=1_000_000,
    )


@pytest.fixture(scope="module")
async def backend(settings: Settings) -> AsyncIterator[GatewayBackend]:
    # The backend takes its snapshot of the server's environment when it is made.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in KERNEL_ENV.items():
            patch.setenv(name, value)
        remote = GatewayBackend(settings)
    yield remote
    await remote.close()


@pytest.fixture(scope="module")
async def kernel(backend: GatewayBackend) -> AsyncIterator[Kernel]:
    """A kernel shared by the tests that leave it alive."""
    shared = await backend.start()
    yield shared
    await shared.shutdown(now=True)


@pytest.fixture
async def fresh(backend: GatewayBackend) -> AsyncIterator[Kernel]:
    """A kernel of its own, for tests that end it."""
    own = await backend.start()
    yield own
    await own.shutdown(now=True)


async def gone_from(gateway: Gateway, kernel_id: str) -> bool:
    return await wait_for(
        lambda: asyncio.to_thread(lambda: not gateway.has_kernel(kernel_id)), timeout=20
    )


async def test_a_gateway_kernel_runs_code(kernel: Kernel, gateway: Gateway) -> None:
    result = await run(kernel, "print('hello from the gateway')\n6 * 7")
    assert result.status == "ok", result
    assert result.outputs[0]["output_type"] == "stream"
    assert result.outputs[0]["text"] == "hello from the gateway\n"
    assert result.outputs[-1]["data"]["text/plain"] == "42"
    assert result.execution_count == 1
    assert isinstance(kernel.process, GatewayProcess)
    assert isinstance(kernel.client, GatewayClient)
    assert kernel.process.backend == "gateway"
    assert gateway.has_kernel(kernel.process.kernel_id)
    assert kernel.language_info["name"] == "python"
    assert kernel.process.rss_bytes() is None
    assert await kernel.is_alive()


async def test_only_kernel_variables_without_secrets_reach_the_kernel(kernel: Kernel) -> None:
    seen = await value(
        kernel, f"import os\nsorted(k for k in {sorted(KERNEL_ENV)!r} if k in os.environ)"
    )
    assert seen == "['KERNEL_PROBE']"
    assert await value(kernel, "os.environ['KERNEL_PROBE']") == "'visible'"


async def test_a_huge_print_is_capped(kernel: Kernel) -> None:
    # Over the collector's cap, under the WebSocket bound (the next tests go past that).
    result = await run(kernel, "print('x' * 1_500_000)\nprint('after')")
    assert result.status == "ok", result
    assert result.dropped_chars > 0
    assert result.truncated
    kept = sum(len(o.get("text", "")) for o in result.outputs)
    assert kept <= 1_000_000


def kept_chars(execution: Execution) -> int:
    return sum(len(output.get("text", "")) for output in execution.outputs) + sum(
        len(str(value)) for output in execution.outputs for value in output.get("data", {}).values()
    )


async def test_a_message_over_the_websocket_bound_is_dropped_with_a_note_and_the_run_goes_on(
    kernel: Kernel, settings: Settings
) -> None:
    client = kernel.client
    assert isinstance(client, GatewayClient)
    assert client.max_size == ws_max_size(settings.max_output_bytes) < 3_000_000
    before, dropped = client.session_id, client.oversized
    # The display is the run's last output: its idle status may be lost while the
    # connection is re-opened, so the run completes on the barrier.
    result = await run(kernel, "kept_before = 'yes'\n" + oversized_display())
    assert result.status == "ok", result
    assert client.oversized == dropped + 1
    # Counted for the run it was noted on (what Kernel can add to dropped_outputs).
    [(noted_on, count)] = client._dropped.items()
    assert count == 1
    assert client.take_dropped(noted_on) == 1 and client.take_dropped(noted_on) == 0
    assert client.session_id != before, "not a fresh connection"
    notice = text(result)
    assert OUTPUT_GUARD_MARKER in notice and "dropped unread" in notice, result.outputs
    assert "KERNEL_MCP_MAX_OUTPUT_BYTES" in notice
    assert kept_chars(result) < 10_000, "the huge display was kept after all"
    assert not client.dead and await kernel.is_alive()
    # The run went on past the display, and the kernel keeps its state.
    assert await value(kernel, "(kept_before, after_display)") == "('yes', True)"
    assert await value(kernel, "6 * 7") == "42"


async def test_a_run_still_going_after_an_oversized_message_completes_on_its_idle(
    kernel: Kernel, tmp_path: Path
) -> None:
    client = kernel.client
    assert isinstance(client, GatewayClient)
    before = client.session_id
    flag = tmp_path / "reconnected"
    # The run waits until the client is on its new connection, then prints.
    wait = (
        f"import pathlib, time\nwhile not pathlib.Path({str(flag)!r}).exists(): time.sleep(0.01)\n"
        "print('printed after the reconnect')\n"
    )
    running = asyncio.ensure_future(run(kernel, oversized_display(then=wait)))

    async def reconnected() -> bool:
        return client.session_id != before

    assert await wait_for(reconnected, timeout=20)
    # Output sent while the connection is re-opened may be lost (the notice says so):
    # release the run only once a round trip on the new connection has come back.
    probe = client.kernel_info("control")
    while (await client.get_control_msg(timeout=20))["parent_header"].get("msg_id") != probe:
        pass
    flag.touch()
    result = await running
    assert result.status == "ok", result
    assert "printed after the reconnect" in text(result)
    assert "dropped unread" in text(result)
    assert await value(kernel, "after_display") == "True"


async def test_is_alive_asks_the_gateway_at_most_once_a_second(
    backend: GatewayBackend, kernel: Kernel
) -> None:
    process = kernel.process
    assert isinstance(process, GatewayProcess)
    asked: list[str] = []

    async def count(request: httpx2.Request) -> None:
        if request.method == "GET" and request.url.path.endswith(process.kernel_id):
            asked.append(str(request.url))

    backend.http.event_hooks["request"].append(count)
    try:
        process._checked_at -= LIVENESS_CACHE  # the cached answer is stale
        for _ in range(20):
            assert await process.is_alive()
        assert len(asked) == 1
        process._checked_at -= LIVENESS_CACHE
        results = await asyncio.gather(*(process.is_alive() for _ in range(5)))
        assert all(results)
        assert len(asked) == 2  # concurrent callers share one request
    finally:
        backend.http.event_hooks["request"].remove(count)


async def test_connect_attaches_a_second_backend_to_the_same_kernel(
    settings: Settings, kernel: Kernel
) -> None:
    await run(kernel, "x = 5")
    other = GatewayBackend(settings)
    try:
        attached = await other.connect(kernel.process.kernel_id)
        try:
            assert attached.kernel_info.get("language_info", {}).get("name") == "python"
            assert await value(attached, "x") == "5"
            await run(attached, "x += 1")
        finally:
            await attached.client.aclose()  # detach; the kernel is not ours to delete
    finally:
        await other.close()
    assert await value(kernel, "x") == "6"
    assert await kernel.is_alive()


async def test_connect_to_a_deleted_kernel_raises(backend: GatewayBackend) -> None:
    doomed = await backend.start()
    kernel_id = doomed.process.kernel_id
    await doomed.shutdown()
    with pytest.raises(KernelError, match="no longer has kernel") as caught:
        await backend.connect(kernel_id)
    assert backend.url in str(caught.value)
    with pytest.raises(KernelError, match="no longer has kernel"):
        await backend.connect("no-such-kernel")


@pytest.mark.parametrize("stage", ["creating", "waiting for kernel_info"])
async def test_a_cancelled_start_leaves_no_kernel_and_no_task_behind(
    backend: GatewayBackend, gateway: Gateway, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await asyncio.to_thread(gateway.kernel_ids)
    reached = asyncio.Event()
    clients: list[GatewayClient] = []

    async def on_request(request: httpx2.Request) -> None:
        if request.method == "POST" and request.url.path == "/api/kernels":
            reached.set()

    original = backend._kernel_info

    async def kernel_info(client: GatewayClient, channel: str) -> dict[str, Any]:
        clients.append(client)
        reached.set()
        return await original(client, channel)

    if stage == "creating":
        backend.http.event_hooks["request"].append(on_request)
    else:
        monkeypatch.setattr(backend, "_kernel_info", kernel_info)
    try:
        starting = asyncio.ensure_future(backend.start())
        await asyncio.wait_for(reached.wait(), 30)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
    finally:
        if stage == "creating":
            backend.http.event_hooks["request"].remove(on_request)
    for client in clients:  # the half-made client closed its socket and ended its tasks
        assert client.closed
        assert all(t is not None and t.done() for t in (client._reader, client._writer))
    assert await wait_for(
        lambda: asyncio.to_thread(lambda: gateway.kernel_ids() <= before), timeout=20
    ), await asyncio.to_thread(gateway.kernel_ids)
    assert not len(backend.tasks) or await wait_for(lambda: _no_tasks(backend), timeout=20)


async def _no_tasks(backend: GatewayBackend) -> bool:
    return not len(backend.tasks)


async def test_start_errors_name_the_gateway_and_never_the_token(
    settings: Settings, gateway: Gateway
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    cases = [
        (
            settings.model_copy(update={"gateway_token": SecretStr(wrong)}),
            "refused the token (HTTP 401)",
        ),
        (settings.model_copy(update={"gateway_token": None}), "requires a token (HTTP 401)"),
        (
            settings.model_copy(update={"gateway_url": f"http://127.0.0.1:{free_port()}"}),
            "is unreachable",
        ),
    ]
    for case, expected in cases:
        bad = GatewayBackend(case)
        try:
            with pytest.raises(KernelStartFailed) as caught:
                await bad.start()
        finally:
            await bad.close()
        message = str(caught.value)
        assert f"kernel gateway at {case.gateway_url}" in message
        assert expected in message
        assert wrong not in message and gateway.token not in message


# -- the whole product on the gateway backend -------------------------------------------
@pytest.fixture(scope="module")
def server(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_server(
        tmp_path_factory.mktemp("gateway-server"),
        KERNEL_MCP_GATEWAY_URL=gateway.url,
        KERNEL_MCP_GATEWAY_TOKEN=gateway.token,
        KERNEL_MCP_POOL_SIZE="1",
        # Small enough that an over-the-bound display stays cheap to make.
        KERNEL_MCP_MAX_OUTPUT_BYTES="1000000",
    ) as srv:
        yield srv


@pytest.mark.transport
@pytest.mark.parametrize("transport", ["mcp", "sse"])
async def test_the_product_runs_files_and_sessions_on_the_gateway(
    server: Any, gateway: Gateway, transport: str
) -> None:
    async with client_for(transport, server) as client:
        result = await call(client, "run_python", file_name="hello_world.py")
        report = structured(result)
        assert not result.is_error, text_of(result)
        assert report["status"] == "ok"
        assert report["stdout"] == "Hello, World!\n"

        session = structured(await call(client, "create_session"))
        session_id = session["session_id"]
        assert session["backend"] == "gateway"
        try:
            assert (
                structured(await call(client, "run_code", code="x = 41", session_id=session_id))[
                    "status"
                ]
                == "ok"
            )
            later = structured(await call(client, "run_code", code="x + 1", session_id=session_id))
            assert later["result"] == "42"
            listed = structured(await call(client, "list_sessions"))["sessions"]
            mine = next(s for s in listed if s["session_id"] == session_id)
            assert mine["backend"] == "gateway"
            assert mine["kernel_id"]
            assert mine["kernel_memory_mb"] is None
            assert await asyncio.to_thread(gateway.has_kernel, mine["kernel_id"])
        finally:
            await call(client, "close_session", session_id=session_id)
        assert await gone_from(gateway, mine["kernel_id"])


@pytest.mark.transport
async def test_the_reply_has_the_shape_of_a_local_one(
    server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with client_for("mcp", server) as client:
        remote = await call(client, "run_python", file_name="hello_world.py")
    with running_server(tmp_path_factory.mktemp("local-server"), KERNEL_MCP_POOL_SIZE="1") as local:
        async with client_for("mcp", local) as client:
            here = await call(client, "run_python", file_name="hello_world.py")
    remote_report, local_report = structured(remote), structured(here)
    assert remote_report.keys() == local_report.keys()
    for key, local_value in local_report.items():
        if key == "duration_s":
            continue
        assert remote_report[key] == local_value, key
    assert [c.type for c in remote.content] == [c.type for c in here.content]
    assert remote.is_error == here.is_error


@pytest.mark.transport
async def test_the_product_reports_errors_timeouts_deaths_and_floods(server: Any) -> None:
    async with client_for("mcp", server) as client:
        failed = await call(client, "run_python", file_name="error_test.py")
        report = structured(failed)
        assert failed.is_error
        assert report["status"] == "error"
        assert report["error"]["ename"] == "ZeroDivisionError"
        assert "risky" in report["error"]["traceback"]

        session_id = structured(await call(client, "create_session"))["session_id"]
        try:
            await call(client, "run_code", code="kept = 'yes'", session_id=session_id)
            looped = structured(
                await call(
                    client, "run_python", file_name="loop.py", timeout=1.5, session_id=session_id
                )
            )
            assert looped["status"] == "timeout"
            assert "looping" in looped["stdout"]
            after = structured(await call(client, "run_code", code="kept", session_id=session_id))
            assert after["status"] == "ok"
            assert after["result"] == "'yes'"
            assert not any("lost" in note for note in after["notes"]), after["notes"]
        finally:
            await call(client, "close_session", session_id=session_id)

        died = structured(await call(client, "run_python", file_name="exit3.py", timeout=30))
        assert died["status"] == "kernel_died"
        # Not asserted: "about to exit" itself. The kernel's last message before a
        # hard exit is sometimes lost between the kernel and the gateway (it never
        # reaches the WebSocket), a race the client cannot close.
        assert any("gateway" in note for note in died["notes"]), died["notes"]

        flooded = structured(await call(client, "run_python", file_name="flood.py"))
        assert flooded["status"] == "ok"
        assert flooded["truncated"]

        again = structured(await call(client, "run_python", file_name="hello_world.py"))
        assert again["status"] == "ok"


@pytest.mark.transport
async def test_a_display_over_the_websocket_bound_becomes_a_note_in_the_reply(
    server: Any,
) -> None:
    async with client_for("mcp", server) as client:
        session_id = structured(await call(client, "create_session"))["session_id"]
        try:
            await call(client, "run_code", code="kept = 'yes'", session_id=session_id)
            reply = structured(
                await call(client, "run_code", code=oversized_display(), session_id=session_id)
            )
            assert reply["status"] == "ok", reply
            assert reply["truncated"]
            assert "dropped unread" in reply["stderr"], reply
            assert "xxxxxxxxxx" not in str(reply)
            later = structured(
                await call(client, "run_code", code="(kept, after_display)", session_id=session_id)
            )
            assert later["status"] == "ok", later
            assert later["result"] == "('yes', True)"
            assert not any("lost" in note for note in later["notes"]), later["notes"]
        finally:
            await call(client, "close_session", session_id=session_id)


# -- failures ----------------------------------------------------------------------
@pytest.mark.transport
async def test_a_wrong_token_is_named_and_the_server_keeps_serving(
    gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    with running_server(
        tmp_path_factory.mktemp("wrong-token-server"),
        KERNEL_MCP_GATEWAY_URL=gateway.url,
        KERNEL_MCP_GATEWAY_TOKEN=wrong,
        KERNEL_MCP_POOL_SIZE="1",
    ) as srv:
        async with client_for("mcp", srv) as client:
            result = await call(client, "run_code", code="1 + 1")
            assert result.is_error
            message = text_of(result)
            assert f"kernel gateway at {gateway.url}" in message
            assert "refused the token" in message
            assert wrong not in message and gateway.token not in message
            files = structured(await call(client, "list_files"))["files"]
            assert "hello_world.py" in files
        assert wrong not in (srv.log or Path("/nonexistent")).read_text(errors="replace")


@pytest.mark.transport
async def test_a_gateway_that_is_down_is_named_and_the_server_keeps_serving(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with running_server(
        tmp_path_factory.mktemp("down-server"),
        KERNEL_MCP_GATEWAY_URL=down,
        KERNEL_MCP_POOL_SIZE="1",
    ) as srv:
        async with client_for("mcp", srv) as client:
            result = await call(client, "run_python", file_name="hello_world.py")
            assert result.is_error
            message = text_of(result)
            assert f"kernel gateway at {down} is unreachable" in message
            files = structured(await call(client, "list_files"))["files"]
            assert "hello_world.py" in files


@pytest.mark.transport
async def test_after_a_gateway_restart_a_session_gets_a_new_kernel_and_says_so(
    server: Any, gateway: Gateway
) -> None:
    # Last on purpose: the restart ends every kernel of the first gateway.
    async with client_for("mcp", server) as client:
        session_id = structured(await call(client, "create_session"))["session_id"]
        try:
            await call(client, "run_code", code="x = 1", session_id=session_id)
            await asyncio.to_thread(gateway.restart)
            after = structured(
                await call(client, "run_code", code="'x' in dir()", session_id=session_id)
            )
            assert after["status"] == "ok", after
            assert after["result"] == "False"
            assert any("state was lost" in note for note in after["notes"]), after["notes"]
            listed = structured(await call(client, "list_sessions"))["sessions"]
            mine = next(s for s in listed if s["session_id"] == session_id)
            assert await asyncio.to_thread(gateway.has_kernel, mine["kernel_id"])
            fresh = structured(await call(client, "run_python", file_name="hello_world.py"))
            assert fresh["status"] == "ok"
        finally:
            await call(client, "close_session", session_id=session_id)


async def test_our_side_of_the_channels_websocket_sends_without_delay(fresh: Kernel) -> None:
    client = fresh.client
    assert isinstance(client, GatewayClient)
    sock = client._ws.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def gateway_side_nodelay(gateway: Gateway, client: GatewayClient) -> int:
    """TCP_NODELAY as the gateway process has it on its end of ``client``'s WebSocket.

    The socket is borrowed from the gateway with pidfd_getfd(2) (Linux 5.6, root or
    ptrace rights), so the option is read, not inferred from timings.
    """
    our_port = client._ws.transport.get_extra_info("sockname")[1]
    ends = psutil.Process(gateway.pid).net_connections("tcp")
    end = next(c for c in ends if c.raddr and c.raddr.port == our_port)
    pidfd = os.pidfd_open(gateway.pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(438, pidfd, end.fd, 0)  # SYS_pidfd_getfd, the same on every arch
        if fd < 0:
            pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=fd) as borrowed:
        return borrowed.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_the_deploy_config_turns_nagle_off_on_the_gateway_side(
    gateway: Gateway, fresh: Kernel, tmp_path: Path
) -> None:
    # As shipped, jupyter_server leaves Nagle on (if this starts failing, upstream
    # fixed it and deploy/gateway_nodelay.py can go).
    assert isinstance(fresh.client, GatewayClient)
    assert gateway_side_nodelay(gateway, fresh.client) == 0
    # With deploy/gateway_nodelay.py as its config file (docs/deploy.md), it is off.
    with Gateway(tmp_path, nodelay=True) as patched:
        backend = GatewayBackend(
            load_settings(
                projects_dir=tmp_path,
                gateway_url=patched.url,
                gateway_token=patched.token,
                pool_size=0,
            )
        )
        try:
            kernel = await backend.start()
            try:
                assert isinstance(kernel.client, GatewayClient)
                assert gateway_side_nodelay(patched, kernel.client) != 0
                assert await value(kernel, "6 * 7") == "42"
            finally:
                await kernel.shutdown(now=True)
        finally:
            await backend.close()
