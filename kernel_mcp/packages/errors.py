"""What an install can refuse or fail with.

::

    RequestError (kernel_mcp.errors)
    ├── PackageRefused     a requirement is not a plain specifier (names the rule)
    ├── PackagesDisabled   installs are turned off on this server
    └── InstallFailed      uv could not install, or a limit stopped it (names the status)

Every message is one line a caller may see: no host paths, and an index URL only
without its credentials. ``InstallFailed.detail`` keeps uv's own words (cleaned the
same way), for a line of its own under the message.
"""

from __future__ import annotations

from typing import Literal

from kernel_mcp.errors import RequestError

__all__ = ["InstallFailed", "InstallStatus", "PackageRefused", "PackagesDisabled"]

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
    """Installing packages is turned off by the server's settings."""


class InstallFailed(RequestError):
    """An install did not happen; the session's packages are as they were.

    ``status`` is one of :data:`InstallStatus`; ``detail`` is uv's own message, if it
    gave one.
    """

    def __init__(self, status: InstallStatus, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status: InstallStatus = status
        self.detail = detail
