"""Sessions: kernels whose variables and imports persist across calls."""

from __future__ import annotations

from fastmcp import FastMCP
from mcp_types import ToolAnnotations

from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import owner
from kernel_mcp.server.views import KernelList, KernelView, SessionAction, SessionList, SessionView
from kernel_mcp.sessions.records import Session

__all__ = ["register_session_tools"]


def register_session_tools(mcp: FastMCP, runner: Runner) -> None:
    async def view(session: Session) -> SessionView:
        kernel = session.kernel
        state = session.state
        # A kernel killed from outside (OOM killer, kill -9) shows as dead at once,
        # not when the next call stumbles on it.
        if state == "idle" and kernel is not None and not await kernel.is_alive():
            state = "dead"
        attacher = runner.attacher
        if state == "idle" and session.record.attached and attacher and kernel:
            # Someone else's cell runs in it: a call now would be refused.
            state = "busy" if attacher.busy(kernel) else state
        rss = kernel.process.rss_bytes() if kernel is not None and state != "dead" else None
        return SessionView(
            session_id=session.id,
            name=session.name,
            state=state,
            created_at=session.created_at,
            last_used=session.last_used,
            runs=session.runs,
            kernel_memory_mb=round(rss / 2**20, 1) if rss else None,
            backend=kernel.process.backend if kernel else runner.backend.name,
            kernel_id=kernel.process.kernel_id if kernel else session.kernel_id,
            notebook=runner.recordings.uri(session.id, session.notebook),
            kernel=session.record.kernel_name,
            sandboxed=kernel.process.sandboxed if kernel else runner.backend.sandboxed,
            run_id=run.id if (run := runner.runs.running_in(session.id)) else None,
            attached=session.record.attached,
            notes=runner.recordings.notes(session.id),
        )

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=False, openWorldHint=False))
    async def create_session(
        name: str | None = None, kernel: str | None = None, kernel_id: str | None = None
    ) -> SessionView:
        """Start a session: a kernel whose variables and imports persist across calls.

        Args:
            name: optional label (letters, digits, -, _, .); names the session's notebook.
            kernel: a kernelspec from list_kernels; omit for the default.
            kernel_id: attach to this kernel, already running on the Jupyter server the
                server is configured with (e.g. the user's notebook kernel, as its
                /api/kernels lists it), instead of starting one: you see and change its
                variables, and it keeps running after close_session.

        Returns session_id: pass it to run_python / run_code / run_notebook. Close the
        session with close_session when done; idle sessions are culled.
        """
        session = await runner.create_session(
            owner=owner(), name=name, kernel=kernel, kernel_id=kernel_id
        )
        return await view(session)

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
    async def list_kernels() -> KernelList:
        """List the kernel environments (kernelspecs) you may choose.

        Each has name (pass it as `kernel` to create_session, run_python, run_code or
        run_notebook), display_name, language, interpreter path, whether it is the
        default and whether it is installed.
        """
        return KernelList(
            kernels=[
                KernelView(
                    name=k.name,
                    display_name=k.display_name,
                    language=k.language,
                    interpreter=k.interpreter,
                    default=k.default,
                    available=k.available,
                )
                for k in runner.kernels.list()
            ]
        )

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
    async def list_sessions() -> SessionList:
        """List your open sessions.

        Each has session_id, name, state (idle | busy | dead), created_at, last_used,
        runs, kernel_memory_mb (resident MiB), backend, kernel_id, kernel (kernelspec),
        run_id (a background run it is busy with) and notebook (URI of its recording).
        Pass a session_id to run_code / run_python, or close it.
        """
        sessions = await runner.sessions.owned(owner())
        return SessionList(
            sessions=[await view(s) for s in sessions],
            max_sessions=runner.settings.max_sessions,
        )

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=False, idempotentHint=True))
    async def interrupt_session(session_id: str) -> SessionAction:
        """Interrupt the call running in a session, like Ctrl-C in a notebook.

        The running call replies with status "interrupted"; the session's variables are
        kept. action is "interrupted" if a call was running, else "idle" (an attached
        session's kernel is then left alone: the cell running may be the user's).
        """
        running = await runner.sessions.interrupt(owner(), session_id)
        idle = "Nothing was running; interrupt sent."
        if not running and (await runner.sessions.find(owner(), session_id)).record.attached:
            idle = "Nothing of yours was running; the attached kernel was not interrupted."
        return SessionAction(
            session_id=session_id,
            action="interrupted" if running else "idle",
            message="Interrupt sent." if running else idle,
        )

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=True, openWorldHint=False))
    async def restart_session(session_id: str) -> SessionAction:
        """Restart a session's kernel: every variable and import is cleared; the id stays.

        Refused for a session attached to someone else's kernel (create_session(kernel_id)).
        """
        await runner.sessions.restart(owner(), session_id)
        return SessionAction(
            session_id=session_id, action="restarted", message="New kernel; state cleared."
        )

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=True, openWorldHint=False))
    async def close_session(session_id: str) -> SessionAction:
        """Close a session and shut its kernel down. Its notebook stays on disk.

        A session attached to a running kernel (create_session(kernel_id=...)) only
        detaches: that kernel keeps running with its state (action "detached").
        """
        session = await runner.sessions.close_session(owner(), session_id)
        if session.record.attached:
            return SessionAction(
                session_id=session_id,
                action="detached",
                message=f"Detached; kernel {session.record.kernel_id} keeps running.",
            )
        return SessionAction(session_id=session_id, action="closed", message="Kernel shut down.")
