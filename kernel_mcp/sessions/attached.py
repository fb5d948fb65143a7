"""Attached sessions: a session on a kernel someone else started (a person's notebook
kernel on the Jupyter server the gateway setting names).

``create_session(kernel_id=...)`` joins such a kernel instead of taking one from the
pool. kernel-mcp never stops, restarts or replaces it: closing the session, culling
it, or stopping the server only closes kernel-mcp's connection (the backend hands out
the kernel with a process whose ``kill`` and ``shutdown`` let go of it). One session
per kernel: a second attach, by anyone, is refused.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from kernel_mcp.backends.base import KernelAttacher
from kernel_mcp.errors import InvalidArgument, KernelBusy, KernelError
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.sessions.records import Session
from kernel_mcp.sessions.store import SessionStore

__all__ = ["Attacher", "kernel_id_of", "refuse_restart"]


class Attacher:
    """Joins sessions to running kernels by id, one session per kernel.

    Args:
        backend: joins kernels by id (a gateway's): the kernel, or InvalidArgument
            (no such kernel, a bad id, one kernel-mcp started) or KernelError.
        store: the session records (which kernels sessions hold already).
    """

    def __init__(self, backend: KernelAttacher, store: SessionStore) -> None:
        self._backend = backend
        self._attach = backend.attach
        self._store = store
        self._attaching: set[str] = set()
        """Kernel ids a create is attaching to right now."""

    @contextlib.asynccontextmanager
    async def claiming(self, owner: str | None, kernel_id: str) -> AsyncIterator[None]:
        """While inside, nobody else attaches to ``kernel_id``.

        Raises:
            InvalidArgument: a session holds it already (another principal's is not named).
        """
        if kernel_id in self._attaching:
            raise InvalidArgument(f"another session is attaching to kernel {kernel_id} now")
        self._attaching.add(kernel_id)
        try:
            for record in await self._store.records():
                if record.kernel_id != kernel_id:
                    continue
                if record.owner == owner and record.attached:
                    raise InvalidArgument(
                        f"your session {record.name!r} ({record.id}) is attached to kernel "
                        f"{kernel_id} already"
                    )
                if record.owner == owner:
                    raise InvalidArgument(
                        f"kernel {kernel_id} is your session {record.name!r}'s own, which "
                        f"kernel-mcp started: run code in that session ({record.id})"
                    )
                raise InvalidArgument(f"kernel {kernel_id} is in use by another session")
            yield
        finally:
            self._attaching.discard(kernel_id)

    async def attach(self, kernel_id: str) -> Kernel:
        return await self._attach(kernel_id)

    def refuse_busy(self, session: Session) -> None:
        """Refuse to queue a call behind someone else's running cell: its time limit, or an
        interrupt_session, would interrupt their cell, not ours.

        Raises:
            KernelBusy: the attached kernel runs someone else's code now.
        """
        kernel = session.kernel
        if not session.record.attached or kernel is None or kernel.recovering:
            return  # (recovering: our own cancelled run is still being stopped)
        if self._backend.busy(kernel):
            raise KernelBusy(
                f"kernel {session.kernel_id} is running someone else's code right now (a "
                "cell in JupyterLab?); this call did not run. Try again once it is idle."
            )

    async def reattach(self, session: Session, lost: str) -> None:
        """An attached kernel is never replaced: connect to it again, if it still runs.

        Raises:
            KernelError: it is gone from the Jupyter server (the session cannot go on).
        """
        old, session.kernel = session.kernel, None
        if old is not None:
            await old.shutdown(now=True)  # only closes the connection (a borrowed kernel)
        kernel_id = session.record.kernel_id
        try:
            session.kernel = await self._attach(kernel_id)
        except (InvalidArgument, KernelError) as exc:
            raise KernelError(
                f"session {session.id!r} is attached to kernel {kernel_id}, which cannot be "
                f"reached again ({lost}; {exc}); kernel-mcp never starts another kernel in its "
                "place: close_session, then attach again or create a new session"
            ) from None
        session.lost_state = (
            f"{lost}; the session connected to its attached kernel again (if it was "
            "restarted meanwhile, its state is gone)"
        )


def kernel_id_of(text: str) -> str:
    """A Jupyter kernel id (a UUID) in its canonical form: lower case, with hyphens.

    Raises:
        InvalidArgument: ``text`` is not one.
    """
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise InvalidArgument(
            f"kernel_id {str(text)[:60]!r} is not a Jupyter kernel id (a UUID such as "
            "5f0c1b2e-...; JupyterLab's Running panel and GET /api/kernels list them)"
        ) from None


def refuse_restart(session: Session) -> None:
    """Raise InvalidArgument if ``session`` is attached: its kernel is not ours to restart."""
    if session.record.attached:
        raise InvalidArgument(
            f"Session {session.id!r} is attached to kernel {session.kernel_id}, which "
            "someone else started on the Jupyter server: kernel-mcp does not restart it "
            "(that would clear their state too). Restart it from JupyterLab, or "
            "close_session and create_session for a kernel of the session's own."
        )
