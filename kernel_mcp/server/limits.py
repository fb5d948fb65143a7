"""Per-principal limits on MCP requests: how many at once, and tool calls per minute.

Both are fastmcp middleware, so they apply on every transport (``/mcp`` in both
eras, ``/sse``, stdio) and know the caller's principal (its token). A call over
a limit is refused at once with a one-line reason: a tool error for
``tools/call`` (the model reads it and can wait), fastmcp's rate-limit error
(JSON-RPC -32000) for other requests. Another principal is never affected.

* Tool calls per minute: fastmcp's own sliding-window limiter
  (``SlidingWindowRateLimitingMiddleware``), per principal, counting tool calls
  only: listing tools or reading a resource is cheap and never started a kernel.
  MCP tasks run their tool in fastmcp's task worker, outside the middleware, so a
  task is counted once, when it is called.
* Requests in flight: fastmcp has no concurrency limit, so it is written here. It
  counts every request while it is served (a tool call until its reply); a
  background run or a parked ``input()`` is not a request in flight once its
  call has replied.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.server.middleware.rate_limiting import (
    RateLimitError,
    SlidingWindowRateLimitingMiddleware,
)

from kernel_mcp.server.auth import owner

__all__ = ["ConcurrentRequests", "ToolCallsPerMinute", "principal_key"]

#: The principal of a server without tokens (or stdio): everyone is this one.
ANONYMOUS = "anonymous"


def principal_key(context: MiddlewareContext[Any] | None = None) -> str:
    """Whose limit a request counts against: its token's principal."""
    return owner() or ANONYMOUS


def _refusal(context: MiddlewareContext[Any], message: str) -> Exception:
    if context.method == "tools/call":
        return ToolError(message)
    return RateLimitError(message)


class ConcurrentRequests(Middleware):
    """At most ``limit`` MCP requests of one principal served at once; more are refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: defaultdict[str, int] = defaultdict(int)

    def in_flight(self, principal: str) -> int:
        return self._in_flight.get(principal, 0)

    async def on_request(self, context: MiddlewareContext[Any], call_next: CallNext) -> Any:
        who = principal_key(context)
        if self._in_flight[who] >= self.limit:
            raise _refusal(
                context,
                f"Too many requests at once: this token already has {self.limit} in progress "
                "(KERNEL_MCP_MAX_CONCURRENT_REQUESTS). Wait for one to finish, or run long "
                "work with background=true.",
            )
        self._in_flight[who] += 1
        try:
            return await call_next(context)
        finally:
            self._in_flight[who] -= 1
            if not self._in_flight[who]:
                del self._in_flight[who]


class ToolCallsPerMinute(SlidingWindowRateLimitingMiddleware):
    """At most ``limit`` tool calls of one principal in any 60 s (fastmcp's sliding window,
    per principal, on tool calls only)."""

    def __init__(self, limit: int) -> None:
        super().__init__(max_requests=limit, window_minutes=1, get_client_id=principal_key)

    async def on_request(self, context: MiddlewareContext[Any], call_next: CallNext) -> Any:
        # fastmcp's version counts every request; only tool calls count here.
        return await call_next(context)

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext) -> Any:
        limiter = self.limiters[await self._get_client_identifier(context)]
        if not await limiter.is_allowed():
            wait = (
                max(1, round(limiter.requests[0] + self.window_seconds - time.monotonic()))
                if limiter.requests
                else self.window_seconds
            )
            raise ToolError(
                f"Rate limit: at most {self.max_requests} tool calls per minute for this "
                f"token (KERNEL_MCP_MAX_CALLS_PER_MINUTE); try again in {wait} s."
            )
        return await call_next(context)
