"""Packages for a session's kernel: wheels only, installed by the server, outside the
sandbox, into the session's own folder.

* ``requirements``  what may be asked: requirement specifiers, parsed and checked;
                    ``%pip install`` lines too
* ``environment``   what the kernel environment and a folder already have
* ``dependencies``  what those leave unmet, and what an install must hand uv
* ``folder``        a session's folder: staged installs made live in one step
* ``uv``            running uv: command line, environment, progress, failures
* ``installer``     one install, from requirements to result
* ``errors``        what an install refuses or fails with

The kernel never installs anything and never reaches the index: the server runs uv
with ``--no-build`` (no sdist is ever built, so no package code runs on the host)
and shows the kernel the result read-only.
"""

from kernel_mcp.packages.environment import (
    Distribution,
    EnvironmentProbe,
    KernelEnvironment,
    read_distributions,
)
from kernel_mcp.packages.errors import (
    InstallFailed,
    InstallStatus,
    PackageRefused,
    PackagesDisabled,
)
from kernel_mcp.packages.folder import PackageFolder
from kernel_mcp.packages.installer import Installer, InstallerSettings, InstallResult
from kernel_mcp.packages.requirements import (
    PipInstall,
    parse_pip_install,
    parse_requirement,
    parse_requirements,
)
from kernel_mcp.packages.uv import ProgressCallback

__all__ = [
    "Distribution",
    "EnvironmentProbe",
    "InstallFailed",
    "InstallResult",
    "InstallStatus",
    "Installer",
    "InstallerSettings",
    "KernelEnvironment",
    "PackageFolder",
    "PackageRefused",
    "PackagesDisabled",
    "PipInstall",
    "ProgressCallback",
    "parse_pip_install",
    "parse_requirement",
    "parse_requirements",
    "read_distributions",
]
