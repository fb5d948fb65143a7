"""The ``gateway`` backend: kernels that live on a Jupyter Kernel Gateway or Enterprise Gateway.

Selected by ``KERNEL_MCP_GATEWAY_URL``. Kernels are started, interrupted and
stopped over the gateway's REST API, and talked to over its WebSocket, with
Jupyter's JSON WebSocket protocol (no subprotocol: every message is one JSON
text frame carrying ``channel``; messages with binary buffers arrive in the
legacy binary framing)::

    POST   {url}/api/kernels                      {"name": ..., "env": {KERNEL_*...}}
    GET    {url}/api/kernels/{id}                 liveness (404: culled or lost)
    POST   {url}/api/kernels/{id}/interrupt
    DELETE {url}/api/kernels/{id}
    WS     {ws-url}/api/kernels/{id}/channels?session_id={fresh id per client}

Every request, the WebSocket handshake included, sends
``Authorization: token <KERNEL_MCP_GATEWAY_TOKEN>`` when a token is set.

Decision: jupyter_server's ``GatewayClient``/``GatewayKernelManager`` were not
used. Their channel WebSocket is opened without the auth header, so a
token-protected gateway answers 401, and ``execute_interactive`` fails on their
channels. A small client over the gateway's documented REST + WebSocket API is
less code than working around both, and it gives ``kernel.Kernel`` exactly the
two seams it needs: a ``KernelClient`` (``GatewayClient``) and a
``KernelProcess`` (``GatewayProcess``).

How a death is seen:

* the gateway's restarter polls its kernels; when one dies it broadcasts an
  IOPub ``status`` of ``restarting`` (autorestart: the state is gone, so for us
  the kernel died) or ``dead``. The client's reader marks the connection dead at
  once, and ``is_alive`` says False without a request;
* the WebSocket closing (gateway stopped, network lost) does the same;
* otherwise ``is_alive`` asks ``GET /api/kernels/{id}`` at most once a second
  (the answer is cached in between); 404 means the gateway culled or lost it.

Gateway-side settings that matter (they are the gateway's, not ours):

* ``KernelRestarter.time_to_dead`` (default 3 s) bounds how fast a dead kernel
  is noticed;
* ``ZMQChannelsWebsocketConnection.limit_rate`` (default on: 1 MB/s over 3 s)
  makes the gateway drop large outputs and send an "IOPub data rate exceeded"
  notice instead; turn it off or raise ``iopub_data_rate_limit`` for big outputs;
* ``DELETE`` asks the kernel to stop and kills it after the gateway's
  ``shutdown_wait_time`` (default 5 s), so a kill can take that long.

Only environment variables named ``KERNEL_*`` (the gateway's convention) are
passed to a new kernel, after the secret filter of ``backends.base.kernel_environment``
(so the server's own ``KERNEL_MCP_*`` settings never are). Error messages name
the gateway URL and never contain the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx2

from kernel_mcp.backends.base import kernel_environment
from kernel_mcp.config import Settings
from kernel_mcp.errors import InvalidArgument, KernelError, KernelStartFailed
from kernel_mcp.kernels.kernel import Kernel, kernel_info_reply
from kernel_mcp.kernels.outputs import OutputLimits

__all__ = ["BorrowedProcess", "GatewayBackend", "GatewayProcess"]

from kernel_mcp.scale.gateway.protocol import (
    CONNECT_TIMEOUT,
    NODELAY,
    START_TIMEOUT,
    GatewayClient,
    _describe,
    _gateway_message,
    _status_message,
    _ws_url,
    ws_max_size,
)
from kernel_mcp.tasks import TaskOwner

log = logging.getLogger(__name__)

#: Ordinary REST calls; DELETE may wait the gateway's shutdown_wait_time.
REQUEST_TIMEOUT = 30.0
#: kernel_info_request is re-sent this often until the kernel answers, seconds.
KERNEL_INFO_RETRY = 1.0
#: The liveness GET must not hold up an execution's wait loop for long.
LIVENESS_TIMEOUT = 3.0
#: is_alive asks the gateway at most this often, seconds.
LIVENESS_CACHE = 1.0
#: DELETE is retried on 5xx (a kernel in the middle of an autorestart answers
#: 500) for this long, seconds.
DELETE_RETRY_FOR = 15.0
#: backend.close() waits this long for clean-ups still running, seconds.
CLOSE_WAIT = 20.0


class GatewayProcess:
    """A kernel on the gateway, as ``kernel.KernelProcess`` sees it."""

    backend = "gateway"
    sandboxed = False
    prepared = None

    def __init__(self, owner: GatewayBackend, kernel_id: str, client: GatewayClient) -> None:
        self.kernel_id = kernel_id
        self.client = client
        self._owner = owner
        self._path = f"/api/kernels/{quote(kernel_id, safe='')}"
        self._gone = False  # the gateway answered 404
        self._reported_dead = False  # the gateway's model said execution_state "dead"
        self._ended = False  # we deleted it
        self._alive = True
        self._checked_at = -math.inf
        self._check = asyncio.Lock()
        self._deleting: asyncio.Task[None] | None = None

    async def is_alive(self) -> bool:
        """False once the client saw a death or lost the socket, or the gateway says 404.

        Otherwise asks ``GET /api/kernels/{id}``, at most once a second.
        """
        if self.client.dead or self._gone or self._ended or self._reported_dead:
            return False
        if time.monotonic() - self._checked_at < LIVENESS_CACHE:
            return self._alive
        async with self._check:
            if time.monotonic() - self._checked_at < LIVENESS_CACHE:
                return self._alive and not self.client.dead
            self._alive = await self._ask_gateway()
            self._checked_at = time.monotonic()
        return self._alive and not self.client.dead

    async def _ask_gateway(self) -> bool:
        try:
            response = await self._owner.http.get(
                self._owner.url + self._path, timeout=LIVENESS_TIMEOUT
            )
        except (httpx2.HTTPError, RuntimeError) as exc:
            # Unanswered is not dead: the WebSocket is the authority on a lost gateway.
            log.debug("liveness check of gateway kernel %s failed: %s", self.kernel_id, exc)
            return True
        if response.status_code == 404:
            self._gone = True
            return False
        if response.status_code == 200:
            with contextlib.suppress(ValueError, AttributeError):
                if response.json().get("execution_state") == "dead":
                    self._reported_dead = True
                    return False
        return True

    async def interrupt(self) -> None:
        """``POST /api/kernels/{id}/interrupt`` (SIGINT for ipykernel); failures are logged."""
        if self.client.dead or self._ended:
            return
        try:
            response = await self._owner.http.post(self._owner.url + self._path + "/interrupt")
        except (httpx2.HTTPError, RuntimeError) as exc:
            log.warning("interrupting gateway kernel %s failed: %s", self.kernel_id, exc)
            return
        if response.status_code >= 400:
            log.warning(
                "interrupting gateway kernel %s: HTTP %s %s",
                self.kernel_id,
                response.status_code,
                self._owner.scrub(_gateway_message(response.content)),
            )

    async def kill(self) -> None:
        """``DELETE /api/kernels/{id}`` (404 is fine) and close the channels."""
        await self._end()

    async def shutdown(self) -> None:
        """Same as ``kill``: the gateway's DELETE already asks first, then kills."""
        await self._end()

    def exit_description(self) -> str:
        """What was seen: the gateway's report, a 404, or the connection closing."""
        if self.client.death:
            return self.client.death
        if self._reported_dead:
            return "the gateway reported the kernel dead"
        if self._gone:
            return "the gateway no longer has the kernel (culled or lost)"
        if self._ended:
            return "the kernel was shut down through the gateway"
        return "the kernel stopped responding"

    def rss_bytes(self) -> int | None:
        """Unknown: the kernel runs elsewhere."""
        return None

    async def _end(self) -> None:
        self._ended = True
        if self._deleting is None:
            # Owned by the backend, so a cancelled caller cannot leave the kernel running.
            self._deleting = self._owner.tasks.spawn(
                self._owner.delete_kernel(self.kernel_id), name=f"delete {self.kernel_id}"
            )
        try:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._deleting)
        finally:
            await self.client.aclose()


class BorrowedProcess(GatewayProcess):
    """A kernel someone else started on the server (a person's notebook kernel), which a
    session attached to: kernel-mcp never stops it. ``kill`` and ``shutdown`` only close
    this process's connection; the kernel, its state and its other clients carry on."""

    async def kill(self) -> None:
        """Let go of the kernel (it keeps running)."""
        await self._let_go()

    async def shutdown(self) -> None:
        """Let go of the kernel (it keeps running)."""
        await self._let_go()

    async def _let_go(self) -> None:
        self._ended = True
        await self.client.aclose()

    def exit_description(self) -> str:
        if self.client.death or self._reported_dead or self._gone:
            return super().exit_description()
        return "kernel-mcp let go of the kernel; it keeps running on the Jupyter server"


class GatewayBackend:
    """Starts (and attaches to) kernels on a Jupyter Kernel / Enterprise Gateway.

    Implements ``backends.base.KernelBackend``. One HTTP client is shared by every
    kernel of the backend; ``close`` waits for clean-ups still running, then
    closes it.
    """

    name = "gateway"
    local = False
    sandboxed = False
    cheap_starts = False  # a start is a remote spawn, paced as a local one

    def __init__(self, settings: Settings) -> None:
        if not settings.gateway_url:
            raise ValueError("GatewayBackend needs settings.gateway_url")
        self.settings = settings
        self.kernel_name = settings.gateway_kernel_name
        self.url = settings.gateway_url.rstrip("/")
        self.limits = OutputLimits(max_output_bytes=settings.max_output_bytes)
        secret = settings.gateway_token.get_secret_value() if settings.gateway_token else ""
        self._token = secret.strip()
        self._headers = {"Authorization": f"token {self._token}"} if self._token else {}
        self.http = httpx2.AsyncClient(
            headers=self._headers,
            timeout=httpx2.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
            # Our side of every connection sends small requests at once (no Nagle).
            transport=httpx2.AsyncHTTPTransport(socket_options=[NODELAY]),
        )
        # The gateway passes KERNEL_* variables from the request to the kernel;
        # the secret filter first, so KERNEL_MCP_* (our own settings) never go.
        self._env = {
            name: value
            for name, value in kernel_environment(os.environ, allow=settings.env_allow).items()
            if name.startswith("KERNEL_")
        }
        self.tasks = TaskOwner("gateway backend")
        """Kernel starts and deletions, which a cancelled caller must not cut short."""
        self.started: set[str] = set()
        """Kernels this backend started and has not deleted (which attach refuses)."""

    # -- KernelBackend -------------------------------------------------------
    def isolation(self) -> str:
        """The gateway's kernels are isolated where they run, not by kernel-mcp."""
        return "n/a (remote kernels: the gateway isolates them)"

    async def start(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        """Start a kernel on the gateway and wait until it answers kernel_info.

        ``kernel_name`` is the gateway's kernelspec (default KERNEL_MCP_GATEWAY_KERNEL_NAME).
        ``workspace`` is ignored: a remote kernel sees no local folder.

        Raises:
            KernelStartFailed: the gateway is unreachable, refused the token, or
                the kernel did not come up; the message names the gateway.
        """
        # Its caller reports a failed start: the task's failure is not logged again.
        creating = self.tasks.spawn(
            self._create(kernel_name or self.kernel_name), name="start a kernel", report=False
        )
        try:
            kernel_id = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # The gateway may still create it: delete it once it has.
            self.tasks.spawn(self._delete_once_created(creating), name="delete once started")
            raise
        try:
            return await self._attach(kernel_id, ready_on="shell")
        except BaseException:
            await self._delete_soon(kernel_id)
            raise

    async def connect(self, kernel_id: str) -> Kernel:
        """Attach to a kernel the gateway already runs (started by another replica).

        Raises:
            KernelError: the gateway no longer has it (404).
            KernelStartFailed: the gateway is unreachable or refused the token.
        """
        response = await self._request(
            "GET", self._kernel_path(kernel_id), what="looking up the kernel", allow=(404,)
        )
        if response.status_code == 404:
            raise KernelError(
                f"kernel gateway at {self.url} no longer has kernel {kernel_id} "
                "(shut down, culled or lost)"
            )
        # kernel_info on control: a busy kernel still answers there at once.
        return await self._attach(kernel_id, ready_on="control")

    async def attach(self, kernel_id: str) -> Kernel:
        """Join a kernel someone else started on the server (a person's notebook kernel).

        The kernel is used as it is: kernel-mcp's in-kernel guards are not installed, and
        stopping the returned kernel only closes the connection (``BorrowedProcess``).

        Raises:
            InvalidArgument: ``kernel_id`` is not a kernel id (a UUID), the server has no
                such kernel, or it is one kernel-mcp started itself.
            KernelStartFailed: the server is unreachable, refused the token, or the
                kernel did not answer.
        """
        try:
            canonical = str(uuid.UUID(kernel_id))
        except (ValueError, TypeError, AttributeError):
            raise InvalidArgument(
                f"kernel_id {str(kernel_id)[:60]!r} is not a Jupyter kernel id (a UUID such "
                "as 5f0c1b2e-...; JupyterLab's Running panel and GET /api/kernels list them)"
            ) from None
        if canonical in self.started:
            raise InvalidArgument(
                f"kernel {canonical} is one kernel-mcp started itself (a session's or the warm "
                "pool's); attach only to a kernel started on the Jupyter server by someone else"
            )
        response = await self._request(
            "GET", self._kernel_path(canonical), what="looking up the kernel", allow=(404,)
        )
        if response.status_code == 404:
            raise InvalidArgument(
                f"the Jupyter server at {self.url} has no kernel {canonical} "
                "(GET /api/kernels lists the running ones)"
            )
        kernel = await self._attach(canonical, ready_on="control", process=BorrowedProcess)
        with contextlib.suppress(ValueError, AttributeError):
            # Until the connection hears a status: the server's, as of the lookup.
            if isinstance(kernel.client, GatewayClient) and not kernel.client.execution_state:
                kernel.client.execution_state = response.json().get("execution_state")
        return kernel

    def busy(self, kernel: Kernel) -> bool:
        """Whether a kernel runs a request right now (anyone's), as its last IOPub status
        said; called between our own runs, it means someone else's."""
        client = kernel.client
        return isinstance(client, GatewayClient) and client.execution_state == "busy"

    async def disconnect(self, kernel: Kernel) -> None:
        """Close this process's connection to a kernel; the kernel keeps running."""
        client = kernel.client
        if isinstance(client, GatewayClient):
            await client.aclose()
        else:  # pragma: no cover - every kernel this backend makes has a GatewayClient
            client.stop_channels()

    async def close(self) -> None:
        """Wait (bounded) for deletions still running, then close the HTTP client."""
        try:
            await self.tasks.close(grace=CLOSE_WAIT)
        finally:
            await self.http.aclose()

    # -- used by GatewayProcess ----------------------------------------------
    async def delete_kernel(self, kernel_id: str) -> None:
        """``DELETE`` a kernel; 404 counts as done, 5xx is retried for a while. Never raises."""
        deadline = time.monotonic() + DELETE_RETRY_FOR
        path = self.url + self._kernel_path(kernel_id)
        while True:
            try:
                response = await self.http.delete(path)
            except (httpx2.HTTPError, RuntimeError) as exc:
                log.warning(
                    "could not delete kernel %s on the kernel gateway at %s: %s",
                    kernel_id,
                    self.url,
                    self.scrub(_describe(exc)),
                )
                return
            status = response.status_code
            if status < 400 or status == 404:
                self.started.discard(kernel_id)
                return
            # A kernel in the middle of an autorestart answers 500; try again.
            if status < 500 or time.monotonic() > deadline:
                log.warning(
                    "kernel gateway at %s would not delete kernel %s: HTTP %s %s",
                    self.url,
                    kernel_id,
                    status,
                    self.scrub(_gateway_message(response.content)),
                )
                return
            await asyncio.sleep(0.25)

    def scrub(self, text: str) -> str:
        """``text`` with the token blanked out, should a message ever echo it."""
        return text.replace(self._token, "***") if self._token else text

    # -- internals -----------------------------------------------------------
    @staticmethod
    def _kernel_path(kernel_id: str) -> str:
        return f"/api/kernels/{quote(kernel_id, safe='')}"

    async def _create(self, kernel_name: str) -> str:
        response = await self._request(
            "POST",
            "/api/kernels",
            what="starting a kernel",
            json={"name": kernel_name, "env": dict(self._env)},
            timeout=START_TIMEOUT,
        )
        try:
            kernel_id = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            raise KernelStartFailed(
                f"kernel gateway at {self.url} answered the kernel start without a kernel id"
            ) from None
        log.info("kernel %s started on the kernel gateway at %s", kernel_id, self.url)
        self.started.add(str(kernel_id))
        return str(kernel_id)

    async def _delete_once_created(self, creating: asyncio.Task[str]) -> None:
        try:
            kernel_id = await creating
        except BaseException:
            return
        await self.delete_kernel(kernel_id)

    async def _delete_soon(self, kernel_id: str) -> None:
        """Delete, waiting for it; if we are cancelled meanwhile the backend still finishes it."""
        task = self.tasks.spawn(self.delete_kernel(kernel_id), name=f"delete {kernel_id}")
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    async def _attach(
        self,
        kernel_id: str,
        *,
        ready_on: str,
        process: type[GatewayProcess] = GatewayProcess,
    ) -> Kernel:
        client = GatewayClient(
            _ws_url(self.url) + self._kernel_path(kernel_id) + "/channels",
            headers=dict(self._headers),
            gateway_url=self.url,
            kernel_id=kernel_id,
            max_size=ws_max_size(self.settings.max_output_bytes),
        )
        try:
            await client.connect()
        except KernelError as exc:
            raise type(exc)(self.scrub(str(exc))) from None
        try:
            handle = process(self, kernel_id, client)
            info = await self._kernel_info(client, ready_on)
        except BaseException:
            await client.aclose()
            raise
        return Kernel(handle, client, limits=self.limits, kernel_info=info)

    async def _kernel_info(self, client: GatewayClient, channel: str) -> dict[str, Any]:
        """Send kernel_info_request until one is answered (a starting kernel may drop some)."""
        deadline = time.monotonic() + START_TIMEOUT
        sent: set[str] = set()
        while True:
            if client.dead:
                raise KernelStartFailed(
                    f"kernel {client.kernel_id} on the kernel gateway at {self.url} "
                    f"ended while starting: {client.death or 'the connection closed'}"
                )
            now = time.monotonic()
            if now >= deadline:
                raise KernelStartFailed(
                    f"kernel {client.kernel_id} on the kernel gateway at {self.url} did not "
                    f"answer kernel_info within {START_TIMEOUT:g} s"
                )
            sent.add(client.kernel_info(channel))
            wait = min(deadline, now + KERNEL_INFO_RETRY) - now
            info = await kernel_info_reply(client, channel, sent, wait)
            if info is not None:
                return info

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        timeout: float | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx2.Response:
        """One REST call; failures become KernelStartFailed naming the gateway."""
        try:
            response = await self.http.request(
                method,
                self.url + path,
                json=json,
                timeout=timeout if timeout is not None else httpx2.USE_CLIENT_DEFAULT,
            )
        except httpx2.HTTPError as exc:
            raise KernelStartFailed(
                f"kernel gateway at {self.url} is unreachable: {self.scrub(_describe(exc))}"
            ) from None
        if response.status_code >= 400 and response.status_code not in allow:
            self._raise_status(response.status_code, response.content, what)
        return response

    def _raise_status(self, status: int, body: bytes, what: str) -> NoReturn:
        raise KernelStartFailed(
            self.scrub(_status_message(self.url, status, body, what, has_token=bool(self._token)))
        )
