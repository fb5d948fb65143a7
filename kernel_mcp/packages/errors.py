"""What an install can refuse or fail with: the classes live in the domain's one
exception tree (``kernel_mcp.errors``); this module names them for the package.

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

from kernel_mcp.errors import InstallFailed, InstallStatus, PackageRefused, PackagesDisabled

__all__ = ["InstallFailed", "InstallStatus", "PackageRefused", "PackagesDisabled"]
