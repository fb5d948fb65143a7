"""The composition root's parts: which kernel backend and session store the settings
select, and the Runner built on them.

Only the CLI and the server use this module (``tests/unit/test_structure.py`` checks it):
the domain (``Runner`` and below) is handed its parts and never picks them. It is
the one place that reaches into ``kernel_mcp.scale``, and only when the settings ask
for it (``KERNEL_MCP_GATEWAY_URL``, ``KERNEL_MCP_STATE_URL``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from kernel_mcp.backends.base import KernelAttacher, KernelBackend
from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import Settings
from kernel_mcp.runner import Runner
from kernel_mcp.sessions.store import InProcessStore, SessionStore

__all__ = ["Deployment", "deployment_for", "runner_for"]


@dataclass(frozen=True)
class Deployment:
    """Where kernels run and where sessions live (and, with shared sessions, how a
    replica reaches a session's kernel: the store's)."""

    backend: KernelBackend
    store: SessionStore
    replica: str | None = None
    """This replica's name among those sharing sessions and a notebooks folder (host and
    port): what is its own there, such as its background runs' markers."""
    attacher: KernelAttacher | None = None
    """Joins kernels someone else started (a gateway without shared sessions)."""

    def runner(self, settings: Settings) -> Runner:
        """The Runner on these parts (its ``close`` closes the backend too)."""
        return Runner(
            settings,
            backend=self.backend,
            store=self.store,
            replica=self.replica,
            attacher=self.attacher,
        )


def deployment_for(settings: Settings) -> Deployment:
    """Local kernels and in-process sessions, unless a gateway or Redis is configured.

    Raises:
        ConfigError: the settings ask for what this machine cannot give (for example
            ``KERNEL_MCP_SANDBOX=on`` where the sandbox cannot work).
    """
    if not settings.gateway_url:
        return Deployment(LocalBackend(settings), InProcessStore())
    from kernel_mcp.scale.gateway.backend import GatewayBackend

    gateway = GatewayBackend(settings)
    if not settings.state_url:
        return Deployment(gateway, InProcessStore(), attacher=gateway)
    from kernel_mcp.scale.redis_store import RedisStore
    from kernel_mcp.scale.state import SharedState

    state = SharedState(settings.state_url)
    store = RedisStore(state, lease_ttl=settings.lease_ttl, kernels=gateway)
    replica = f"{socket.gethostname()}-{settings.port}"
    return Deployment(gateway, store, replica=replica)


def runner_for(settings: Settings) -> Runner:
    """The Runner on the deployment the settings select."""
    return deployment_for(settings).runner(settings)
