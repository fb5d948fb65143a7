"""The gateway's kernel protocol client: one kernel's channels over one WebSocket.

Jupyter's JSON WebSocket protocol (no subprotocol: every message is one JSON
text frame carrying ``channel``; messages with binary buffers arrive in the
legacy binary framing), as a Kernel Gateway or Enterprise Gateway serves it at
``{ws-url}/api/kernels/{id}/channels?session_id={fresh id per client}``.
:class:`GatewayClient` implements ``kernels.process.KernelClient``; the REST side
(start, interrupt, delete, liveness) is ``scale.gateway.backend``.

Messages from the gateway are bounded (``ws_max_size``: twice
``KERNEL_MCP_MAX_OUTPUT_BYTES`` plus room for the envelope, at least
``WS_MAX_MESSAGE_FLOOR``). websockets refuses a bigger message from its header,
before reading it, and closes the connection with 1009, so a huge display is
never held or parsed here. That is not a dead kernel: the client notes it on the
running execution (a stream message on stderr whose text starts with the output
guard's marker, so the reply says ``truncated``), opens a new channels WebSocket
with a fresh session id, and the run goes on. The shell reply of a request sent
over the old connection is lost with it (the gateway routes replies to the
connection that asked), and so is whatever IOPub sent while reconnecting; such a
request therefore completes on its IOPub ``idle`` status, for which the client
synthesises the missing ``execute_reply``. If that idle fell into the gap, an
empty silent ``execute_request`` sent on the new connection is the barrier: the
kernel runs execute requests in order (it may answer a ``kernel_info_request``
while a cell still runs, so that is no barrier), so once its IOPub messages (or,
failing those, its reply and ``PROBE_SETTLE`` seconds) arrive, the earlier
request has ended and its idle is synthesised too. The same session id is not
reused on purpose: the gateway replays a buffer only when it had no other connection (not true
with replicas attached), and a new client must not share a ZMQ identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import socket
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from kernel_mcp.errors import KernelError, KernelStartFailed
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from kernel_mcp.scale.gateway import frames
from kernel_mcp.tasks import TaskOwner, stop_task, wait_within

__all__ = ["GatewayClient", "ws_max_size"]

log = logging.getLogger(__name__)

#: How long a kernel may take to start and answer kernel_info, seconds.
START_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
#: Closing handshake of the WebSocket, seconds.
WS_CLOSE_TIMEOUT = 2.0
CHANNELS = ("shell", "iopub", "stdin", "control")
#: The smallest bound on one message from the gateway, bytes (kernel_info and
#: ordinary replies must always fit, whatever KERNEL_MCP_MAX_OUTPUT_BYTES says).
WS_MAX_MESSAGE_FLOOR = 1024 * 1024
#: Room for a message's envelope (headers, metadata, JSON framing), bytes.
WS_ENVELOPE = 64 * 1024
#: After the barrier request's reply, how long its IOPub messages may lag, seconds.
PROBE_SETTLE = 0.5
#: At most this many requests are tracked for a reconnect (the rest are old).
MAX_FLIGHTS = 256
#: Requests of ours whose IOPub messages are kept (the kernel runs them in order, so
#: older ones ended long ago).
MAX_OWN_REQUESTS = 1024
#: The note a run gets when a message of it was over the bound.
OVERSIZED_NOTICE = (
    "\n{marker} a message from the kernel of over {limit} bytes was dropped unread (an output "
    "too large to take: over twice KERNEL_MCP_MAX_OUTPUT_BYTES); output sent while the "
    "connection to the kernel gateway was re-opened may be missing too]\n"
)


def ws_max_size(max_output_bytes: int) -> int:
    """The bound on one WebSocket message from the gateway, for a per-output cap.

    Twice the cap: an output the collector would keep (``max_output_bytes``
    characters) grows when JSON-escaped; plus the envelope.
    """
    return max(WS_MAX_MESSAGE_FLOOR, 2 * max_output_bytes + WS_ENVELOPE)


#: TCP_NODELAY: a few small frames per execute must not wait for the peer's delayed ACK.
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _no_delay(ws: ClientConnection) -> None:
    """Set TCP_NODELAY on our side of the channels WebSocket.

    asyncio sets it on TCP transports already; saying so here keeps it true
    whatever the event loop. The gateway's side is the operator's (docs/deploy.md).
    """
    sock = ws.transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(*NODELAY)


def _ws_url(url: str) -> str:
    """``http(s)://`` → ``ws(s)://``."""
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    return "ws://" + url.removeprefix("http://")


def _gateway_message(body: bytes) -> str:
    """The gateway's own words from an error body (JSON ``message``/``reason``, or text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        for key in ("message", "reason"):
            if data.get(key):
                return str(data[key])[:300]
    return text[:300]


def _too_big(ended: ConnectionClosed | None) -> bool:
    """The connection ended because a message was over our ``max_size`` (we closed with 1009)."""
    return (
        ended is not None
        and ended.sent is not None
        and ended.sent.code == CloseCode.MESSAGE_TOO_BIG
    )


def _is_idle(msg_type: str | None, msg: dict[str, Any]) -> bool:
    return msg_type == "status" and msg["content"].get("execution_state") == "idle"


@dataclass
class _Flight:
    """An execute_request sent and not yet complete: what of its answer has arrived."""

    replied: bool = False
    idle: bool = False
    execution_count: int | None = None


class GatewayClient:
    """The channels of one gateway kernel over one WebSocket.

    Implements ``kernel.KernelClient``. One reader task puts every incoming
    message on the queue of its channel (and re-opens the WebSocket after an
    oversized message, see the module docstring); one writer task per
    connection sends what ``execute``/``kernel_info`` queue (they must return a
    msg_id at once). The tasks belong to the client and end in ``aclose`` (or
    ``stop_channels``).

    ``death`` says why the kernel is gone when the client saw it go: an IOPub
    status ``dead``/``restarting``, or the socket closing. ``oversized`` counts
    the messages dropped for being over ``max_size``.
    """

    def __init__(
        self,
        ws_url: str,
        *,
        headers: dict[str, str],
        gateway_url: str,
        kernel_id: str,
        max_size: int = WS_MAX_MESSAGE_FLOOR,
    ) -> None:
        #: Fresh for every connection: the gateway keys connections by session id.
        self.session_id = uuid.uuid4().hex
        self.kernel_id = kernel_id
        self.gateway_url = gateway_url
        self.max_size = max_size
        self._ws_url = ws_url
        self._headers = headers
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {
            channel: asyncio.Queue() for channel in CHANNELS
        }
        self._outgoing: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._tasks = TaskOwner("gateway client")
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.death: str | None = None
        """Why the kernel is gone, when the client saw it (not set by ``aclose``)."""
        self.closed = False
        self.oversized = 0
        """How many messages were dropped unread for being over ``max_size``."""
        # Requests in flight on the current connection, and those whose reply a
        # dropped connection took with it (they complete on their IOPub idle).
        self._flights: dict[str, _Flight] = {}
        self._orphans: dict[str, _Flight] = {}
        self._probe: str | None = None
        self._probe_timer: asyncio.TimerHandle | None = None
        self._dropped: dict[str, int] = {}
        self.execution_state: str | None = None
        """The kernel's state as the last IOPub status of an execute request said, whoever's
        it was (None: none heard yet). Statuses of control requests (our kernel_info) are
        left out: the kernel answers those while a cell runs."""
        self._own: OrderedDict[str, None] = OrderedDict()
        """Our execute and kernel_info requests, newest last."""
        self.foreign = 0
        """IOPub messages dropped on arrival: they answer another client's request on the
        same kernel (a person's cell in JupyterLab, another replica's run). Kept, they
        would pile up until our next run skipped them."""

    def take_dropped(self, msg_id: str) -> int:
        """How many messages of request ``msg_id`` were dropped unread (and forget them).

        For ``kernel.Kernel`` to count in ``Execution.dropped_outputs``; the run
        also got a stderr notice, so the reply says so without it.
        """
        return self._dropped.pop(msg_id, 0)

    @property
    def _url(self) -> str:
        return f"{self._ws_url}?session_id={self.session_id}"

    @property
    def dead(self) -> bool:
        """The connection is unusable: the kernel died, the socket closed, or we closed it."""
        return self.closed or self.death is not None

    # -- lifecycle -----------------------------------------------------------
    async def connect(self, *, timeout: float = START_TIMEOUT) -> None:
        """Open the WebSocket and start the reader and writer.

        Raises:
            KernelError: 404, the gateway does not have the kernel.
            KernelStartFailed: the gateway is unreachable or refused the handshake.
        """
        self._ws = await self._open(timeout)
        self._reader = self._tasks.spawn(self._read_forever(), name="read")
        self._writer = self._tasks.spawn(self._write(self._ws), name="write")

    async def _open(self, timeout: float) -> ClientConnection:
        url = self.gateway_url
        try:
            ws = await connect(
                self._url,
                additional_headers=self._headers,
                # Bounded: a bigger message is refused from its header, unread (1009).
                max_size=self.max_size,
                open_timeout=timeout,
                close_timeout=WS_CLOSE_TIMEOUT,
            )
            _no_delay(ws)
            return ws
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 404:
                raise KernelError(
                    f"kernel gateway at {url} no longer has kernel {self.kernel_id}"
                ) from None
            body = exc.response.body or b""
            raise KernelStartFailed(
                _status_message(
                    url, status, body, "opening the channels", has_token=bool(self._headers)
                )
            ) from None
        except InvalidHandshake as exc:
            raise KernelStartFailed(
                f"kernel gateway at {url} refused the kernel channels WebSocket: {exc}"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise KernelStartFailed(
                f"kernel gateway at {url} is unreachable: {_describe(exc)}"
            ) from None

    async def aclose(self) -> None:
        """Stop the reader and writer, wait for them, and close the WebSocket."""
        self.closed = True
        self._cancel_probe_timer()
        tasks = [task for task in (self._reader, self._writer) if task is not None]
        for task in tasks:
            task.cancel()
        try:
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await wait_within(self._ws.close(), WS_CLOSE_TIMEOUT + 1)
        finally:
            await self._tasks.close()

    def stop_channels(self) -> None:
        """Synchronous close (``KernelClient``): cancel the tasks, drop the connection.

        ``GatewayProcess.kill``/``shutdown`` already awaited ``aclose``; this is
        the fallback when they did not run.
        """
        if self.closed and (self._ws is None or self._ws.transport.is_closing()):
            return
        self.closed = True
        self._cancel_probe_timer()
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
        if self._ws is not None:
            self._ws.transport.abort()

    # -- requests (KernelClient) --------------------------------------------
    def execute(
        self,
        code: str,
        silent: bool = False,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool | None = None,
        stop_on_error: bool = True,
    ) -> str:
        """Queue an execute_request on the shell channel; returns its msg_id."""
        content = {
            "code": code,
            "silent": silent,
            "store_history": store_history,
            "user_expressions": user_expressions or {},
            "allow_stdin": bool(allow_stdin),
            "stop_on_error": stop_on_error,
        }
        return self._send("execute_request", content, "shell")

    def kernel_info(self, channel: str = "shell") -> str:
        """Queue a kernel_info_request (on ``shell`` or ``control``); returns its msg_id."""
        return self._send("kernel_info_request", {}, channel)

    def input(self, string: str) -> None:
        """Answer the kernel's input_request (as jupyter_client's ``input`` does)."""
        self._send("input_reply", {"value": string}, "stdin")

    async def get_stdin_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next stdin message (an input_request). Raises ``queue.Empty`` after ``timeout``."""
        return await self._get("stdin", timeout)

    async def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next shell message. Raises ``queue.Empty`` after ``timeout`` s (None: wait)."""
        return await self._get("shell", timeout)

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next IOPub message. Raises ``queue.Empty`` after ``timeout`` s (None: wait)."""
        return await self._get("iopub", timeout)

    async def get_control_msg(self, timeout: float | None = None) -> dict[str, Any]:
        """The next control message. Raises ``queue.Empty`` after ``timeout`` s (None: wait)."""
        return await self._get("control", timeout)

    # -- internals -----------------------------------------------------------
    def _send(self, msg_type: str, content: dict[str, Any], channel: str) -> str:
        msg = frames.message(msg_type, content, channel, session=self.session_id)
        msg_id = str(msg["header"]["msg_id"])
        if msg_type in ("execute_request", "kernel_info_request"):
            self._own[msg_id] = None
            while len(self._own) > MAX_OWN_REQUESTS:
                self._own.popitem(last=False)
        self._outgoing.put_nowait((json.dumps(msg), msg_id, msg_type))
        return msg_id

    async def _get(self, channel: str, timeout: float | None) -> dict[str, Any]:
        pending = self._queues[channel]
        if not pending.empty():
            return pending.get_nowait()
        if timeout is None:
            return await pending.get()
        if self.dead or timeout <= 0:
            raise queue.Empty  # nothing more is coming, or the caller would not wait
        try:
            return await wait_within(pending.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None

    async def _read_forever(self) -> None:
        """Read connection after connection: a new one only after an oversized message."""
        ws = self._ws
        while ws is not None:
            ended = await self._read(ws)
            if self.closed:
                return
            if not _too_big(ended):
                self._saw_death("the connection to the kernel gateway closed")
                break
            ws = await self._reopen()
        if self._writer is not None:
            self._writer.cancel()

    async def _read(self, ws: ClientConnection) -> ConnectionClosed | None:
        """Queue every message of one connection; returns how it ended."""
        try:
            async for frame in ws:
                msg = frames.decode(frame)
                if msg is not None:
                    self._receive(msg)
        except ConnectionClosed as exc:
            return exc
        except Exception:
            log.exception("reading from the kernel gateway failed")
        return None

    def _receive(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel") or "shell"
        msg_type = msg["header"].get("msg_type")
        parent = msg["parent_header"].get("msg_id")
        if channel == "iopub" and msg_type == "status":
            state = msg["content"].get("execution_state")
            if msg["parent_header"].get("msg_type") == "execute_request":
                self.execution_state = state
            if state == "dead":
                self._saw_death("the gateway reported the kernel dead")
            elif state == "restarting":
                self._saw_death(
                    "the gateway saw the kernel die and is restarting it; its state is gone"
                )
        if parent is not None and parent == self._probe:
            # The barrier's own messages: they say the requests before it have ended.
            if channel == "iopub":
                self._settle_orphans()
            elif self._probe_timer is None:
                self._probe_timer = asyncio.get_running_loop().call_later(
                    PROBE_SETTLE, self._settle_orphans
                )
            return
        if channel == "iopub" and parent is not None and parent not in self._own:
            self.foreign += 1
            return
        target = self._queues.get(channel)
        if target is None:
            log.debug("ignoring a message on unknown channel %r", channel)
            return
        target.put_nowait(msg)
        if parent is not None:
            self._track(channel, msg_type, parent, msg)

    def _track(self, channel: str, msg_type: str | None, parent: str, msg: dict[str, Any]) -> None:
        orphan = self._orphans.get(parent)
        if orphan is not None:
            if channel == "iopub" and msg_type == "execute_input":
                orphan.execution_count = msg["content"].get("execution_count")
            elif channel == "iopub" and _is_idle(msg_type, msg):
                # Its reply went with the old connection: complete it on its idle.
                del self._orphans[parent]
                log.debug("request %s completes on its idle status", parent)
                if not orphan.replied:
                    self._synthesise_reply(parent, orphan)
            return
        flight = self._flights.get(parent)
        if flight is None:
            return
        if channel == "shell" and msg_type == "execute_reply":
            flight.replied = True
        elif channel == "iopub" and msg_type == "execute_input":
            flight.execution_count = msg["content"].get("execution_count")
        elif channel == "iopub" and _is_idle(msg_type, msg):
            flight.idle = True
        if flight.replied and flight.idle:
            del self._flights[parent]

    async def _reopen(self) -> ClientConnection | None:
        """After an oversized message: note it, open a fresh connection, set the barrier."""
        self.oversized += 1
        self._orphans.update(self._flights)
        self._flights.clear()
        running = next((i for i, f in self._orphans.items() if not f.idle), None)
        log.warning(
            "gateway kernel %s sent a message over %d bytes; it was dropped unread (%s)",
            self.kernel_id,
            self.max_size,
            "noted on the running request" if running else "no request of ours was running",
        )
        if running is not None:
            self._dropped[running] = self._dropped.get(running, 0) + 1
            text = OVERSIZED_NOTICE.format(marker=OUTPUT_GUARD_MARKER, limit=self.max_size)
            self._put("iopub", "stream", running, {"name": "stderr", "text": text})
        await stop_task(self._writer)
        self.session_id = uuid.uuid4().hex
        try:
            ws = await self._open(CONNECT_TIMEOUT)
        except KernelError as exc:
            self._saw_death(
                f"the connection to the kernel gateway closed and re-opening it failed: {exc}"
            )
            return None
        self._ws = ws
        self._writer = self._tasks.spawn(self._write(ws), name="write")
        if self._orphans:
            # An empty silent execute, not a kernel_info_request: ipykernel 7 may answer
            # kernel_info while a cell still runs, but runs execute requests in order.
            self._probe = self._send(
                "execute_request",
                {
                    "code": "",
                    "silent": True,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": False,
                },
                "shell",
            )
        return ws

    def _settle_orphans(self) -> None:
        """The barrier passed: the orphaned requests have ended; complete those still open."""
        self._cancel_probe_timer()
        self._probe = None
        orphans, self._orphans = self._orphans, {}
        if orphans:
            log.debug("barrier passed: completing %s", ", ".join(orphans))
        for msg_id, orphan in orphans.items():
            self._put("iopub", "status", msg_id, {"execution_state": "idle"})
            if not orphan.replied:
                self._synthesise_reply(msg_id, orphan)

    def _synthesise_reply(self, msg_id: str, flight: _Flight) -> None:
        # Its outcome is in its IOPub messages (an error output makes it an error).
        content = {
            "status": "ok",
            "execution_count": flight.execution_count,
            "user_expressions": {},
            "payload": [],
        }
        self._put("shell", "execute_reply", msg_id, content)

    def _put(self, channel: str, msg_type: str, parent: str, content: dict[str, Any]) -> None:
        """Queue a message the kernel's answer lost, marked as made up here."""
        self._queues[channel].put_nowait(
            frames.message(
                msg_type,
                content,
                channel,
                session=self.session_id,
                parent={"msg_id": parent, "msg_type": "execute_request"},
                metadata={"kernel_mcp": "synthesised after a dropped connection"},
            )
        )

    def _cancel_probe_timer(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None

    async def _write(self, ws: ClientConnection) -> None:
        while True:
            frame, msg_id, msg_type = await self._outgoing.get()
            if msg_type == "execute_request":
                # Tracked before sending: if the connection drops meanwhile, the
                # request may have reached the gateway, and is not sent again.
                self._flights[msg_id] = _Flight()
                while len(self._flights) > MAX_FLIGHTS:
                    del self._flights[next(iter(self._flights))]
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return  # the reader sees the close too, and says what it means

    def _saw_death(self, why: str) -> None:
        if self.death is None:
            self.death = why
            log.info("gateway kernel %s: %s", self.kernel_id, why)


def _status_message(url: str, status: int, body: bytes, what: str, *, has_token: bool) -> str:
    """An HTTP error from the gateway as one line that names it."""
    message = _gateway_message(body)
    refused = status == 401 or (status == 403 and message in ("", "Forbidden"))
    if refused and not has_token:
        return (
            f"kernel gateway at {url} requires a token (HTTP {status}); "
            "set KERNEL_MCP_GATEWAY_TOKEN"
        )
    if refused:
        return f"kernel gateway at {url} refused the token (HTTP {status})"
    detail = f": {message}" if message else ""
    return f"kernel gateway at {url} answered HTTP {status} to {what}{detail}"


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase (some httpx errors have an empty message)."""
    if isinstance(exc, (httpx2.TimeoutException, asyncio.TimeoutError)):
        return f"no answer in time ({type(exc).__name__})"
    text = str(exc).strip()
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__
