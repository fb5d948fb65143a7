"""Waiting for a started kernel to answer, without a fixed delay.

jupyter_client's ``wait_for_ready`` ends by draining IOPub until it has been
silent for 0.2 s, so every kernel start paid 200 ms of nothing (measured here:
about a third of a cold start, and four times a forked kernel's whole start).
A kernel is ready when its shell answers ``kernel_info`` and its IOPub stream
reaches us: ipykernel >= 6.29 greets each new subscriber with an
``iopub_welcome`` message, and any kernel publishes ``status`` messages for the
``kernel_info`` request. Either proves the subscription is live, so nothing the
first execution publishes can be lost. Messages left queued are harmless: an
execution reads only the messages whose parent is its own request.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["wait_ready"]

#: How long a kernel_info request may go unanswered before it is sent again (a
#: request sent before the kernel bound its socket can be lost).
RESEND = 1.0


async def wait_ready(
    client: Any, alive: Callable[[], Awaitable[bool]], *, timeout: float
) -> dict[str, Any]:
    """Wait until ``client``'s kernel answers on shell and IOPub; returns its kernel_info.

    Raises:
        RuntimeError: the kernel died first, or did not answer within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    heard_iopub = False
    msg_id = client.kernel_info()
    asked = time.monotonic()
    while info is None or not heard_iopub:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"kernel did not answer within {timeout:g} s")
        if not await alive():
            raise RuntimeError("kernel died before it answered")
        if now - asked > RESEND:
            msg_id, asked = client.kernel_info(), now
        shell = asyncio.ensure_future(client.get_shell_msg(timeout=0.05))
        iopub = asyncio.ensure_future(client.get_iopub_msg(timeout=0.05))
        try:
            for name, task in (("shell", shell), ("iopub", iopub)):
                try:
                    msg = await task
                except (queue.Empty, asyncio.TimeoutError, ValueError):
                    continue
                if name == "iopub":
                    heard_iopub = True
                elif msg.get("parent_header", {}).get("msg_id") == msg_id or (
                    msg.get("msg_type") == "kernel_info_reply" and info is None
                ):
                    info = dict(msg.get("content") or {})
        finally:
            # Cancelled while awaiting shell (a start the server gave up on): the
            # IOPub read would end in Empty that nobody retrieves, logged as
            # "Task exception was never retrieved".
            if not iopub.done():
                iopub.cancel()
            elif not iopub.cancelled():
                iopub.exception()
    return info
