"""install_packages: wheels into a session, installed by the server (runner/packages.py)."""

from __future__ import annotations

from fastmcp import Context, FastMCP
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from kernel_mcp.runner import Runner
from kernel_mcp.runner.packages import PackagesOutcome
from kernel_mcp.server.auth import owner
from kernel_mcp.server.replies import progress_reporter

__all__ = ["InstalledPackage", "PackagesInstalled", "register_package_tools"]


class InstalledPackage(BaseModel):
    """One distribution the install added or changed."""

    name: str
    version: str
    replaced: str | None = Field(None, description="The version it replaced in this session.")


class PackagesInstalled(BaseModel):
    """Structured result of install_packages (its output schema)."""

    session_id: str
    installed: list[InstalledPackage] = Field(
        description="Every distribution installed or changed, dependencies included."
    )
    already_satisfied: list[str] = Field(
        description="Asked for and already there (kernel environment or this session)."
    )
    skipped: list[str] = Field(description="Asked for with a marker that does not hold here.")
    restart_needed: list[str] = Field(
        description="Installed, but the kernel had imported an older copy: restart_session "
        "to use the new one."
    )
    folder_mb: float = Field(description="The session's installed packages, MiB.")
    duration_s: float
    notes: list[str]


def packages_installed(session_id: str, outcome: PackagesOutcome) -> PackagesInstalled:
    result = outcome.result
    replaced = {d.name: str(d.version) for d in result.replaced}
    return PackagesInstalled(
        session_id=session_id,
        installed=[
            InstalledPackage(
                name=d.display_name or d.name, version=str(d.version), replaced=replaced.get(d.name)
            )
            for d in result.installed
        ],
        already_satisfied=list(result.satisfied),
        skipped=list(result.skipped),
        restart_needed=list(outcome.restart_needed),
        folder_mb=round(result.folder_bytes / 2**20, 2),
        duration_s=round(result.duration_s, 3),
        notes=[*result.notes, *outcome.notes],
    )


def register_package_tools(mcp: FastMCP, runner: Runner) -> None:
    @mcp.tool(
        annotations=ToolAnnotations(
            readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=True
        )
    )
    async def install_packages(
        session_id: str, packages: list[str], ctx: Context | None = None
    ) -> PackagesInstalled:
        """Install Python packages into a session, for its kernel to import at once.

        Args:
            session_id: from create_session. Only this session's kernel sees them; they
                stay across restart_session and go with close_session.
            packages: requirement specifiers only, e.g. ["pandas", "tqdm==4.66.*",
                "requests[socks]>=2.31"]: names, extras, versions, markers. No options,
                URLs, paths or VCS references.

        The server installs wheels only (no package is built from source), from its
        configured index; the kernel itself has no network. Returns installed (each
        name and version, dependencies included), already_satisfied, restart_needed
        (already imported: call restart_session to use the new version) and notes.
        Then import them in run_code with the same session_id. A failure names its
        status: not_found, no_wheel, needs_build, conflict, cap_reached,
        index_unreachable or timeout.
        """
        outcome = await runner.packages.install_for(
            runner.sessions,
            runner.recordings,
            owner(),
            session_id,
            packages,
            progress=progress_reporter(ctx),
        )
        return packages_installed(session_id, outcome)
