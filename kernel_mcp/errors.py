"""The domain's exceptions: one tree, every error this package raises on purpose.

The MCP layer translates them once, at the edge (``server/errors.py``, a fastmcp
middleware for every tool and resource): a ``RequestError`` becomes a tool error
with its message, a ``KernelError`` one that starts "Kernel failure:", any other one
its message; the CLI turns ``ConfigError`` and ``CannotServe`` into its exit codes.

::

    KernelMCPError
    ├── ConfigError              a setting is invalid; start-up stops
    │   └── ClientConfigError    a client's config file cannot be merged (left as it was)
    ├── CannotServe              the server cannot start serving (port in use, start-up failed)
    ├── RequestError             the caller asked for something we refuse
    │   ├── PathRefused          a path guard rule was broken (names the rule)
    │   ├── FileNotFound         no such file inside the allowed folder
    │   ├── InvalidArgument      a bad argument value
    │   ├── InvalidNotebook      not a valid nbformat v4 notebook
    │   ├── NotebookExists       export target exists and overwrite was not asked
    │   ├── NotebookUnwritable   the notebooks folder refused an export (says why)
    │   ├── SessionNotFound      unknown id, or one owned by another principal
    │   ├── SessionGone          the session was culled or closed (says when)
    │   ├── KernelBusy           an attached kernel runs someone else's code right now
    │   ├── TooManySessions      KERNEL_MCP_MAX_SESSIONS reached
    │   ├── QuotaExceeded        the principal's projects folder is at its disk cap
    │   ├── NotEnoughMemory      the machine's available memory would not cover a new
    │   │                        kernel (KERNEL_MCP_ADMISSION_MB)
    │   ├── RunNotFound          unknown run id, or one owned by another principal
    │   ├── RunGone              the run's result was dropped, or lost to a restart
    │   ├── PackageRefused       a package requirement is not a plain specifier (names the rule)
    │   ├── PackagesDisabled     installing packages is off, or the kernels are not local
    │   ├── InstallFailed        an install did not happen (names the status; nothing changed)
    │   └── ViewUnavailable      no web page to watch a session from (stdio mode)
    ├── RunFailed                a run the call waited on could not run, or was cancelled
    ├── KernelError              the kernel machinery failed
    │   ├── KernelStartFailed    a kernel could not be started
    │   │   └── ForkFailed       the fork template could not make one (one is spawned)
    │   │       └── TemplateStuck  the template did not answer in time (it is replaced)
    │   ├── SeccompUnavailable   the kernels' seccomp filter cannot be built here
    │   └── StateUnavailable     shared session state (Redis) cannot be reached
    │       └── ClaimLost        a call's hold on a session ended before the call did
    │           └── LeaseLost    (shared sessions) its Redis lease lapsed
    └── RecordingError           a run could not be written to its notebook (yet);
                                 the run itself succeeded and keeps its reply
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CannotServe",
    "ClaimLost",
    "ClientConfigError",
    "ConfigError",
    "FileNotFound",
    "ForkFailed",
    "InstallFailed",
    "InstallStatus",
    "InvalidArgument",
    "InvalidNotebook",
    "KernelBusy",
    "KernelError",
    "KernelMCPError",
    "KernelStartFailed",
    "LeaseLost",
    "NotEnoughMemory",
    "NotebookExists",
    "NotebookUnwritable",
    "PackageRefused",
    "PackagesDisabled",
    "PathRefused",
    "QuotaExceeded",
    "RecordingError",
    "RequestError",
    "RunFailed",
    "RunGone",
    "RunNotFound",
    "SeccompUnavailable",
    "SessionGone",
    "SessionNotFound",
    "StateUnavailable",
    "TemplateStuck",
    "TooManySessions",
    "ViewUnavailable",
]


class KernelMCPError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(KernelMCPError):
    """A setting is invalid. The message is one line naming the setting."""


class ClientConfigError(ConfigError):
    """``kernel-mcp config --write`` cannot merge into a client's configuration file
    (not JSON, not the expected shape, not writable). The file is left as it was."""


class CannotServe(KernelMCPError):
    """The server cannot start serving (one line for the user: a port in use, a bind
    address that does not resolve, a start-up that failed)."""


class RequestError(KernelMCPError):
    """The request is refused; the message is safe to show the caller."""


class PathRefused(RequestError):
    """A path broke a guard rule. ``rule`` is a short machine-readable name."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class FileNotFound(RequestError):
    """No such file inside the allowed folder."""


class InvalidArgument(RequestError):
    """An argument has a value we cannot accept."""


class InvalidNotebook(RequestError):
    """A file is not a valid nbformat v4 notebook."""


class NotebookExists(RequestError):
    """An export would overwrite a file and ``overwrite`` was not set."""


class NotebookUnwritable(RequestError):
    """An export could not be written; the message says why, without paths."""


class SessionNotFound(RequestError):
    """Unknown session id. Foreign ids get exactly this error too."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"Unknown session {session_id!r}. Call create_session for a new one.")
        self.session_id = session_id


class SessionGone(RequestError):
    """The session existed but was culled or closed."""


class KernelBusy(RequestError):
    """An attached kernel runs someone else's code (a person's cell) right now."""


class TooManySessions(RequestError):
    """The session limit is reached."""


class QuotaExceeded(RequestError):
    """A write would take the principal's projects folder past its disk cap."""


class NotEnoughMemory(RequestError):
    """No kernel is handed out: the machine's available memory would not cover one.

    Refused for now, not for good: it passes when memory is freed (kernel_mcp.admission).
    """


class RunNotFound(RequestError):
    """Unknown run id (another principal's ids get exactly this error too)."""

    def __init__(self, run_id: str, replica: str | None = None) -> None:
        where = (
            f" Runs live on the replica that started them (this is {replica})."
            if replica is not None
            else ""
        )
        super().__init__(f"Unknown run {run_id!r}. list_runs shows your runs.{where}")


class RunGone(RequestError):
    """The run existed, but its result was dropped or the server restarted under it.

    ``kind`` is ``"dropped"`` (past KERNEL_MCP_RUN_RETENTION) or ``"lost"`` (a restart).
    """

    def __init__(self, message: str, kind: Literal["lost", "dropped"]) -> None:
        super().__init__(message)
        self.kind = kind


#: Why an install failed, for a caller to act on:
#:
#: * ``not_found``: no such project on the index, or no version matches;
#: * ``no_wheel``: wheels exist, none for this platform or Python;
#: * ``needs_build``: only a source distribution, and builds are refused;
#: * ``conflict``: the requirements contradict each other (or the installed ones);
#: * ``cap_reached``: the session's packages would pass their size cap (undone);
#: * ``index_unreachable``: the index did not answer, or answered an error;
#: * ``timeout``: the install ran past its time limit (undone);
#: * ``failed``: anything else uv reported (its words are in ``detail``).
InstallStatus = Literal[
    "not_found",
    "no_wheel",
    "needs_build",
    "conflict",
    "cap_reached",
    "index_unreachable",
    "timeout",
    "failed",
]


class PackageRefused(RequestError):
    """A requirement is refused before anything runs. ``rule`` names why, briefly
    (``option``, ``url``, ``vcs``, ``path``, ``direct_reference``, ``character``,
    ``invalid``, ``empty``, ``too_many``, ``too_long``, ``pip_command``)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} (rule: {rule})")
        self.rule = rule


class PackagesDisabled(RequestError):
    """Installing packages is turned off by the server's settings, or its kernels are
    not local (a gateway's)."""


class InstallFailed(RequestError):
    """An install did not happen; the session's packages are as they were.

    ``status`` is one of :data:`InstallStatus`; ``detail`` is uv's own message, if it
    gave one.
    """

    def __init__(self, status: InstallStatus, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status: InstallStatus = status
        self.detail = detail

    def described(self) -> str:
        """What a caller reads: the message, its status, and uv's words on a line below."""
        return f"{self} (status: {self.status})" + (f"\n{self.detail}" if self.detail else "")


class RunFailed(KernelMCPError):
    """A run the call waited on ended without an outcome: it could not run (the message
    is why, as the run recorded it), or it was cancelled."""


class KernelError(KernelMCPError):
    """The kernel machinery failed (not the user's code)."""


class KernelStartFailed(KernelError):
    """A kernel could not be started."""


class ForkFailed(KernelStartFailed):
    """The fork template could not start, or could not make this kernel; the backend
    spawns one instead (``launch.forkserver``)."""


class TemplateStuck(ForkFailed):
    """The fork template (or its namespace maker) did not answer a fork request in
    time; it is replaced."""


class SeccompUnavailable(KernelError):
    """The kernels' seccomp filter cannot be built here (libseccomp or pyseccomp is
    missing, or refused a rule); the sandbox runs without it unless it must not."""


class StateUnavailable(KernelError):
    """The shared state (Redis) could not be reached or answered an error."""


class ClaimLost(StateUnavailable):
    """A call's hold on a session ended before the call did: another process may be
    serving the session now, so nothing may be written for it. (Never in process: an
    in-process claim always holds.)"""


class LeaseLost(ClaimLost):
    """A shared session's Redis lease lapsed under a call: a stalled event loop or a
    Redis outage outlasted KERNEL_MCP_LEASE_TTL."""


class RecordingError(KernelMCPError):
    """A run's cell could not be written to disk. It is kept in memory and retried.

    The message says why in words a caller may see: no absolute paths.
    """


class ViewUnavailable(RequestError):
    """view_session was asked of a server with no HTTP listener to serve the page from."""
