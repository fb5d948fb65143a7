"""Kernel environments a caller may choose: the allowed kernelspecs, described.

``KERNEL_MCP_KERNELS`` names the kernelspecs callers may pick (the configured
``KERNEL_MCP_KERNEL_NAME`` always comes first and is the default). A data
environment becomes one with ``python -m ipykernel install --user --name
mydata``, run in that environment. ``python3`` is the server's own interpreter
(the local backend puts it first on the kernels' PATH), whatever kernelspec of
that name the machine has.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from kernel_mcp.config import Settings
from kernel_mcp.errors import InvalidArgument

__all__ = ["KernelCatalog", "KernelChoice"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KernelChoice:
    """One kernelspec a caller may choose."""

    name: str
    display_name: str
    language: str
    interpreter: str | None
    """The executable the kernel runs (its kernelspec's argv[0], resolved)."""
    default: bool
    available: bool
    """Installed where kernels start (False: configured but not found)."""


class KernelCatalog:
    """The allowed kernelspecs, and the check that a caller's choice is one of them."""

    def __init__(self, settings: Settings, *, local: bool, default: str) -> None:
        """``local``: the backend's kernels run on this machine (its kernelspecs are
        installed here); ``default``: the kernelspec the backend starts by default."""
        self.settings = settings
        self.local = local
        self.default = default
        self.allowed = [self.default] if not local else list(settings.allowed_kernels)

    def list(self) -> list[KernelChoice]:
        return [self._describe(name) for name in self.allowed]

    def notebook_metadata(self, name: str | None) -> dict[str, str]:
        """What a notebook records of kernelspec ``name`` (None: the default): its name,
        display name and language, so that Jupyter re-runs it on the same kernelspec."""
        choice = self._describe(name or self.default)
        language = choice.language if choice.language != "unknown" else "python"
        return {"name": choice.name, "display_name": choice.display_name, "language": language}

    def choose(self, name: str | None) -> str | None:
        """The kernelspec to start for a caller's ``kernel`` argument (None: the default).

        Raises:
            InvalidArgument: not one of the allowed kernelspecs, or not installed.
        """
        if name is None or name == self.default:
            return None
        if name not in self.allowed:
            raise InvalidArgument(
                f"Kernel {name!r} is not allowed here; list_kernels shows the choices "
                "(the operator adds kernelspecs with KERNEL_MCP_KERNELS)."
            )
        if not self._describe(name).available:
            raise InvalidArgument(f"Kernel {name!r} is allowed but not installed on this server.")
        return name

    def _describe(self, name: str) -> KernelChoice:
        default = name == self.default
        if not self.local:
            return KernelChoice(name, name, "python", None, default, True)
        if name == "python3":
            # The local backend runs the server's own interpreter for python3.
            return KernelChoice(
                name, "Python 3 (ipykernel)", "python", sys.executable, default, True
            )
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            log.warning("kernelspec %r is in KERNEL_MCP_KERNELS but not installed", name)
            return KernelChoice(name, name, "unknown", None, default, False)
        argv0 = spec.argv[0] if spec.argv else None
        interpreter = None
        if argv0:
            interpreter = argv0 if os.path.isabs(argv0) else shutil.which(argv0) or argv0
        return KernelChoice(
            name, spec.display_name or name, spec.language or "unknown", interpreter, default, True
        )
