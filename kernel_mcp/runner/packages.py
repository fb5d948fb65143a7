"""Each session's packages: installed by the server, seen by the session's kernel only.

Where they live, and how a kernel from the warm pool gets them. Pool kernels are
started before any session exists, so no session's folder can be bound into one
at its start. Instead every local kernel is started with an empty folder of its
own, ``packages/`` in its private connection folder, bound read-only into its
sandbox at the same path (``launch.sandbox.PACKAGES``; forked kernels bind it in
the template's child, spawned ones through bwrap). Bubblewrap binds show what the
host later puts inside the bound folder, so the server can fill it while the
kernel runs; the kernel can neither write there nor see any other kernel's.

A session's packages are kept on the host in a folder of the session's own
(:class:`~kernel_mcp.packages.PackageFolder`: staged installs, made live in one
step), in a private folder of this server's (removed when it stops; if it is
killed, by the next server, as the backend's own: ``backends/private_folder.py``).
After every install, and whenever the session gets a new kernel (``restart_session``,
a dead kernel replaced: at its next call, before the call's code), the live tree
is *published* into the kernel's bound folder: a copy of hard links (no file data
is copied), switched in with one symlink rename, so that the kernel sees the old
tree or the new one, never half of one. The kernel then puts
``<its folder>/current`` in front of ``sys.path`` (and runs the folder's ``.pth``
files, as ``site`` does) and invalidates the import system's caches: the next
``import`` finds the new packages without a restart. Closing the session removes
its folder; a kernel's bound folder goes with the kernel's connection folder.

Why not one shared, read-only packages root with a folder per session in it: every
kernel would then see every session's packages. Why not move the session's tree
into each new kernel's folder: the old kernel's folder is removed when it stops,
and a restart stops it before the new kernel is handed out. Why at the next call
and not in the session registry's restart: the registry stays packages-free, and
one place (:meth:`SessionPackages.ready`) covers the first kernel, a restart and a
replaced dead kernel alike.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbformat import NotebookNode
from nbformat.v4.nbbase import random_cell_id

from kernel_mcp.backends.private_folder import make_private_folder
from kernel_mcp.config import Settings
from kernel_mcp.errors import InstallFailed, KernelError, KernelMCPError, PackagesDisabled
from kernel_mcp.kernels.execution import StdinHandler
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.kernelspecs import KernelCatalog
from kernel_mcp.kernels.setup import SERVER_REQUEST
from kernel_mcp.packages import (
    EnvironmentProbe,
    Installer,
    InstallerSettings,
    InstallResult,
    PackageFolder,
    ProgressCallback,
    parse_pip_install,
    parse_requirements,
)
from kernel_mcp.runner.recordings import SessionRecordings
from kernel_mcp.sessions.records import Session
from kernel_mcp.sessions.registry import SessionRegistry

__all__ = ["PackagesOutcome", "SessionPackages", "activation_code", "pip_cell"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Copies of a session's tree tried when an install replaces it during the copy.
PUBLISH_ATTEMPTS = 3
#: What the kernel runs to see a published tree (``{path!r}`` is its ``current``).
ACTIVATE = """\
import importlib as _kmcp_i, site as _kmcp_s, sys as _kmcp_y
_kmcp_p = {path!r}
if _kmcp_p in _kmcp_y.path:
    _kmcp_y.path.remove(_kmcp_p)
_kmcp_s.addsitedir(_kmcp_p)
_kmcp_y.path.remove(_kmcp_p)
_kmcp_y.path.insert(0, _kmcp_p)
_kmcp_i.invalidate_caches()
del _kmcp_i, _kmcp_s, _kmcp_y, _kmcp_p
"""
#: The top-level names of the modules the kernel has imported (for the restart note).
IMPORTED = "sorted({_m.partition('.')[0] for _m in __import__('sys').modules})"


#: When the session has no running kernel to show an install to.
NO_KERNEL = (
    "The session's kernel is not running; its next kernel (the next call, or "
    "restart_session) sees these packages"
)


def activation_code(path: Path) -> str:
    """The silent cell that puts ``path`` in front of the kernel's ``sys.path``, runs
    its ``.pth`` files and invalidates the import caches."""
    return ACTIVATE.format(path=str(path))


def pip_cell(requirements: Sequence[str], text: str) -> NotebookNode:
    """The notebook cell an install is recorded as: ``%pip install …`` (what re-runs
    it in an ordinary Jupyter), with what was installed as its output."""
    return NotebookNode(
        id=random_cell_id(),
        cell_type="code",
        metadata=NotebookNode(kernel_mcp={"tool": "install_packages"}),
        execution_count=None,
        # Quoted as a shell word: IPython's %pip hands the line to a shell.
        source="%pip install " + " ".join(shlex.quote(r) for r in requirements),
        outputs=[NotebookNode(output_type="stream", name="stdout", text=text)],
    )


@dataclass(frozen=True)
class PackagesOutcome:
    """One install, as the session saw it."""

    result: InstallResult
    #: Installed distributions the kernel had already imported: it needs a restart.
    restart_needed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """What the install did, in a few lines (the notebook cell's output)."""
        lines = [f"Installed {d}" for d in self.result.installed]
        lines += [f"Already there: {s}" for s in self.result.satisfied]
        lines += [*self.result.notes, *self.notes]
        if self.restart_needed:
            lines.append(
                "Already imported before this install (restart_session to use the new "
                "version): " + ", ".join(self.restart_needed)
            )
        return "\n".join(lines) + "\n" if lines else "Nothing to install.\n"


class SessionPackages:
    """The sessions' package folders, their installs, and what their kernels see."""

    def __init__(self, settings: Settings, *, local: bool, kernels: KernelCatalog) -> None:
        self.settings = settings
        self.local = local
        self.kernels = kernels
        cache = settings.packages_cache_dir or _default_cache()
        self.installer = Installer(
            InstallerSettings(
                data_dir=cache,
                index_url=settings.package_index,
                timeout_s=settings.packages_timeout,
                max_folder_bytes=settings.packages_max_mb * MIB,
            )
        )
        self.probe = EnvironmentProbe()
        self._root: Path | None = None
        self._folders: dict[str, PackageFolder] = {}

    def check_enabled(self) -> None:
        """Raises PackagesDisabled when installs are off, or the kernels are not local."""
        if not self.settings.packages:
            raise PackagesDisabled(
                "Installing packages is turned off on this server (KERNEL_MCP_PACKAGES=false)"
            )
        if not self.local:
            raise PackagesDisabled(
                "install_packages needs local kernels: this server's kernels run on a "
                "gateway, whose environment it cannot add to (install them in the "
                "gateway's kernel image instead)"
            )

    def folder(self, session_id: str) -> PackageFolder:
        """The session's own folder (made on first use, in this server's private folder)."""
        folder = self._folders.get(session_id)
        if folder is None:
            if self._root is None:
                # Named as the backend's private folder is (this server's pid in it), so
                # that the next server removes it if this one is killed.
                self._root = make_private_folder()
            folder = self._folders[session_id] = PackageFolder(self._root / session_id)
        return folder

    async def install(
        self,
        session: Session,
        packages: Sequence[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> InstallResult:
        """Install ``packages`` (requirement specifiers) into the session's folder.

        Raises:
            PackagesDisabled: installs are off, or the kernels are not local.
            PackageRefused: an item is not a plain requirement specifier.
            InstallFailed: uv failed, or a limit stopped it; nothing changed.
        """
        self.check_enabled()
        requirements = parse_requirements(packages)
        environment = await self.probe.environment(self._interpreter(session))
        folder = self.folder(session.id)
        return await self.installer.install(requirements, folder, environment, progress=progress)

    async def install_for(
        self,
        sessions: SessionRegistry,
        recordings: SessionRecordings,
        owner: str | None,
        session_id: str,
        packages: Sequence[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> PackagesOutcome:
        """One ``install_packages`` call: install, show the session's kernel the result
        (waiting for a call running in it to end), and record a ``%pip install`` cell.

        Raises:
            as :meth:`install`, and SessionNotFound / SessionGone for the session.
        """
        self.check_enabled()
        session = await sessions.find(owner, session_id)
        result = await self.install(session, packages, progress=progress)
        if not result.installed:
            return PackagesOutcome(result)
        if session.busy and progress is not None:
            await progress(result.duration_s, "installed; waiting for the session's running call")
        async with sessions.hold(owner, session_id) as held:
            kernel = held.kernel
            if kernel is None:
                return PackagesOutcome(result, notes=(NO_KERNEL,))
            try:
                await self.ready(held, kernel)
                imported = await self.publish(held, kernel, probe=True)
            except (KernelError, OSError) as exc:
                log.info("session %s: packages not shown to its kernel: %s", session_id, exc)
                return PackagesOutcome(result, notes=(NO_KERNEL,))
            outcome = PackagesOutcome(
                result, restart_needed=tuple(str(d) for d in result.imported(imported))
            )
            recording = await recordings.recording(held, kernel)
            cell = pip_cell(result.requirements, outcome.summary())
            notes = await recordings.record(held, recording, [cell])
        return PackagesOutcome(result, outcome.restart_needed, tuple(notes))

    async def publish(self, session: Session, kernel: Kernel, *, probe: bool = False) -> list[str]:
        """Show the session's live tree to ``kernel`` (nothing if it has none); returns
        the kernel's imported top-level modules when ``probe``."""
        target = await self._copy_tree(session, kernel)
        if target is None:
            return []
        expressions = {"modules": IMPORTED} if probe else None
        reply = await kernel.run_silently(activation_code(target), expressions=expressions)
        return _listed(reply, "modules") if probe else []

    async def _copy_tree(self, session: Session, kernel: Kernel) -> Path | None:
        """The session's live tree copied (hard links) into the kernel's folder; what
        the kernel puts on ``sys.path`` for it (None: no tree, or no folder)."""
        folder = self._folders.get(session.id)
        target = kernel.packages_dir
        if folder is None or target is None:
            return None
        # Not under the folder's install lock: a restart must not wait for an install.
        # An install that goes live meanwhile removes the tree being copied; the copy
        # is then made again, of the new one (and the install publishes it anyway).
        for attempt in range(PUBLISH_ATTEMPTS):
            live = folder.live()
            if live is None:
                return []
            try:
                await asyncio.to_thread(_publish, live, PackageFolder(target))
                break
            except (OSError, shutil.Error):
                if attempt + 1 == PUBLISH_ATTEMPTS:
                    raise
        return PackageFolder(target).path_entry

    # -- %pip install in a session's kernel -------------------------------------------
    async def ready(self, session: Session, kernel: Kernel) -> None:
        """Before a call in the session: a kernel new to it (the first, or one after a
        restart or a death) gets the session's packages, and may ask for ``%pip
        install`` (its guard sends the request over the stdin channel, :meth:`_answer_for`).
        Once per kernel; local kernels only."""
        if kernel.server_requests is not None or kernel.packages_dir is None or not self.local:
            return
        # Set first: a kernel that cannot take the set-up (not Python) is not asked again.
        kernel.server_requests = self._answer_for(session, kernel)
        try:
            # Also with installs turned off: %pip then says so, rather than "no session".
            await kernel.run_silently("get_ipython().kernel._kmcp_packages = True")
            if session.id in self._folders:
                await self.publish(session, kernel)
        except (KernelError, OSError) as exc:
            log.info("session %s: no packages or %%pip in its kernel: %s", session.id, exc)

    def _answer_for(self, session: Session, kernel: Kernel) -> StdinHandler:
        async def answer(prompt: str, password: bool) -> str:
            try:
                request = json.loads(prompt[len(SERVER_REQUEST) :])
                line, modules = str(request["line"]), [str(m) for m in request["modules"]]
            except (ValueError, KeyError, TypeError):
                return json.dumps({"error": "The kernel's %pip request was not understood"})
            try:
                return json.dumps(await self._pip(session, kernel, line, modules))
            except KernelMCPError as exc:
                failed = exc.described() if isinstance(exc, InstallFailed) else str(exc)
                return json.dumps({"error": failed})

        return answer

    async def _pip(
        self, session: Session, kernel: Kernel, line: str, modules: list[str]
    ) -> dict[str, Any]:
        """``%pip install`` from ``kernel``: install, copy the tree into its folder (it
        activates the tree itself: it is busy running the cell)."""
        self.check_enabled()
        asked = parse_pip_install(line)
        environment = await self.probe.environment(self._interpreter(session))
        result = await self.installer.install(
            list(asked.requirements), self.folder(session.id), environment, upgrade=asked.upgrade
        )
        path = await self._copy_tree(session, kernel)
        restart = tuple(str(d) for d in result.imported(modules))
        notes = tuple(f"Ignored here: {option}" for option in asked.ignored)
        text = PackagesOutcome(result, restart, notes).summary()
        return {"path": str(path) if path is not None else None, "text": text}

    async def closed(self, session: Session) -> None:
        """The session ended: its folder goes (an install still running then fails)."""
        folder = self._folders.pop(session.id, None)
        if folder is not None:
            await asyncio.to_thread(folder.remove)

    async def close(self) -> None:
        """Remove every session's folder (the runner is closing)."""
        self._folders.clear()
        if self._root is not None:
            await asyncio.to_thread(shutil.rmtree, self._root, True)

    def _interpreter(self, session: Session) -> Path:
        name = session.record.kernel_name or self.kernels.default
        for choice in self.kernels.list():
            if choice.name == name and choice.interpreter:
                return Path(choice.interpreter)
        raise PackagesDisabled(
            f"The session's kernel ({name}) has no Python interpreter the server can install for"
        )


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "kernel-mcp" / "uv"


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system: a copy
        shutil.copy2(source, destination)


def _publish(live: Path, target: PackageFolder) -> None:
    """A copy of ``live`` made of hard links, made ``target``'s live tree in one step."""
    target.root.mkdir(mode=0o700, exist_ok=True)
    stage = target.root / f".stage-{os.urandom(6).hex()}"
    try:
        shutil.copytree(live, stage, symlinks=True, copy_function=_link_or_copy)
        old = target.commit(stage)
    except BaseException:
        target.discard(stage)
        raise
    if old is not None:
        target.discard(old)


def _listed(reply: dict[str, Any], name: str) -> list[str]:
    value = reply.get("user_expressions", {}).get(name, {})
    if value.get("status") != "ok":
        return []
    with contextlib.suppress(ValueError, SyntaxError):
        names = ast.literal_eval(value.get("data", {}).get("text/plain", "[]"))
        return [str(n) for n in names]
    return []
