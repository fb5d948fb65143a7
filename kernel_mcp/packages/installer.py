"""Installing wheels into a session's packages folder, outside the sandbox.

One install, from the caller's requirements to the result:

1. wait for the folder's lock (one install at a time per session);
2. plan: what the kernel environment already meets is reported, not installed
   (:func:`kernel_mcp.packages.dependencies.plan`);
3. stage a copy of the live tree (:class:`PackageFolder`) and run uv into it, with
   the environment's names excluded; then check what the environment and the
   stage together leave unmet, and let uv install that too (a second pass, rarely
   a third);
4. check the stage's size against the cap;
5. make the stage live in one step, or remove it: a failure, the time limit, the
   cap or a cancelled call leave the session's packages as they were.

The result names every distribution that the install added or changed (read from
the ``*.dist-info`` folders, not from uv's prose), what it replaced, and the
importable names of each, so that the caller can tell which of them its kernel had
already imported.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kernel_mcp.packages import uv
from kernel_mcp.packages.dependencies import plan, unmet
from kernel_mcp.packages.environment import Distribution, KernelEnvironment, read_distributions
from kernel_mcp.packages.errors import InstallFailed
from kernel_mcp.packages.folder import PackageFolder, tree_bytes
from kernel_mcp.packages.requirements import parse_requirement

__all__ = ["InstallResult", "Installer", "InstallerSettings"]

#: Passes of uv after the first, for what the environment leaves unmet.
MAX_EXTRA_PASSES = 2
MIB = 1024 * 1024


@dataclass(frozen=True)
class InstallerSettings:
    """How installs run. ``data_dir`` is the server's private folder for them: uv's
    cache (``cache/``, shared by every session) and its empty home (``home/``)."""

    data_dir: Path
    #: A PEP 503 simple index URL; None: uv's default, the public index.
    index_url: str | None = None
    #: Time limit of one install (all its passes), seconds.
    timeout_s: float = 300.0
    #: Cap on one session's folder, bytes.
    max_folder_bytes: int = 2048 * MIB
    #: The uv binary; None: the ``uv`` wheel's.
    uv_path: Path | None = None

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def home_dir(self) -> Path:
        return self.data_dir / "home"


@dataclass(frozen=True)
class InstallResult:
    """What one install did."""

    #: Distributions the install added, or changed to a new version.
    installed: tuple[Distribution, ...] = ()
    #: The versions those replaced in the session's folder.
    replaced: tuple[Distribution, ...] = ()
    #: Asked for and already there: "pandas 2.3.3 (kernel environment)".
    satisfied: tuple[str, ...] = ()
    #: Asked for, with a marker that does not hold for this kernel.
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: The session's folder after the install, bytes.
    folder_bytes: int = 0
    duration_s: float = 0.0
    #: What was asked, as packaging rendered it (for a notebook's ``%pip install`` cell).
    requirements: tuple[str, ...] = field(default=())

    def imported(self, modules: Iterable[str]) -> list[Distribution]:
        """The installed distributions whose importable names (or those of the version
        they replaced) the kernel has imported: ``modules`` are its ``sys.modules``
        names. The kernel needs a restart for those to take effect."""
        tops = {name.partition(".")[0] for name in modules}
        old = {d.name: d.top_level for d in self.replaced}
        return [d for d in self.installed if tops & {*d.top_level, *old.get(d.name, ())}]


class Installer:
    """Installs wheels with uv into sessions' package folders (see the module docs)."""

    def __init__(self, settings: InstallerSettings) -> None:
        self.settings = settings

    async def install(
        self,
        requirements: Sequence[Requirement],
        folder: PackageFolder,
        environment: KernelEnvironment,
        *,
        upgrade: bool = False,
        progress: uv.ProgressCallback | None = None,
    ) -> InstallResult:
        """Install ``requirements`` (already checked: see ``requirements.py``) into
        ``folder``, on top of ``environment``.

        Raises:
            PackageRefused: a requirement is not a plain specifier.
            InstallFailed: uv failed, or the time limit or the size cap was reached;
                the folder is as it was.
        """
        started = time.monotonic()
        # Checked again here: what reaches uv is this rendering, never an option.
        requirements = [parse_requirement(str(r)) for r in requirements]
        if folder.lock.locked() and progress is not None:
            await progress(0.0, "waiting for this session's other install to finish")
        async with folder.lock:
            deadline = time.monotonic() + self.settings.timeout_s
            return await self._install(
                list(requirements), folder, environment, upgrade, progress, started, deadline
            )

    async def _install(
        self,
        requested: list[Requirement],
        folder: PackageFolder,
        environment: KernelEnvironment,
        upgrade: bool,
        progress: uv.ProgressCallback | None,
        started: float,
        deadline: float,
    ) -> InstallResult:
        asked = tuple(str(r) for r in requested)
        before = await asyncio.to_thread(read_distributions, folder.live(), top_level=False)
        base = environment.distributions
        planned = plan(requested, before, base, environment.markers, upgrade=upgrade)
        satisfied = tuple(f"{s} (kernel environment)" for s in planned.satisfied)
        roots = [*planned.install, *(r for r in requested if r not in planned.install)]
        if not planned.install and not unmet(roots, before, base, environment.markers):
            return InstallResult(
                satisfied=satisfied,
                skipped=planned.skipped,
                folder_bytes=await asyncio.to_thread(folder.size_bytes),
                duration_s=time.monotonic() - started,
                requirements=asked,
            )
        stage = await asyncio.to_thread(folder.stage)
        try:
            notes, now = await self._passes(
                planned.install, roots, stage, environment, upgrade, progress, started, deadline
            )
            size = await asyncio.to_thread(tree_bytes, stage)
            if size > self.settings.max_folder_bytes:
                raise InstallFailed(
                    "cap_reached",
                    f"The session's packages would take {size / MIB:.1f} MiB, over their "
                    f"{self.settings.max_folder_bytes / MIB:g} MiB cap "
                    "(KERNEL_MCP_PACKAGES_MAX_MB); nothing was installed",
                )
            if time.monotonic() > deadline:
                raise self._timeout()
            changed = {
                n for n, d in now.items() if n not in before or before[n].version != d.version
            }
            after = await asyncio.to_thread(read_distributions, stage, top_level=changed)
            if changed & set(before):  # the names the replaced versions gave, while they exist
                before |= await asyncio.to_thread(
                    read_distributions, folder.live(), top_level=changed
                )
            # In this thread: a commit is two renames, and must not go on after a cancel.
            old = folder.commit(stage)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(folder.discard, stage))
            raise
        if old is not None:
            await asyncio.to_thread(folder.discard, old)
        installed = tuple(
            d for n, d in sorted(after.items()) if n not in before or before[n].version != d.version
        )
        replaced = tuple(before[d.name] for d in installed if d.name in before)
        kept = {canonicalize_name(r.name) for r in requested} & set(after) - {
            d.name for d in installed
        }
        satisfied += tuple(f"{after[n]} (this session)" for n in sorted(kept))
        return InstallResult(
            installed=installed,
            replaced=replaced,
            satisfied=satisfied,
            skipped=planned.skipped,
            notes=notes,
            folder_bytes=size,
            duration_s=time.monotonic() - started,
            requirements=asked,
        )

    async def _passes(
        self,
        install: Sequence[Requirement],
        roots: Sequence[Requirement],
        stage: Path,
        environment: KernelEnvironment,
        upgrade: bool,
        progress: uv.ProgressCallback | None,
        started: float,
        deadline: float,
    ) -> tuple[tuple[str, ...], dict[str, Distribution]]:
        """uv into ``stage``, then again for what is left unmet; returns notes on what
        is still unmet, and what the stage holds."""
        base, markers = environment.distributions, environment.markers
        wanted = list(install)
        upgrades = [canonicalize_name(r.name) for r in install] if upgrade else []
        if not wanted:  # all asked for is there, but an extra of it needs more
            now = await asyncio.to_thread(read_distributions, stage, top_level=False)
            wanted = unmet(roots, now, base, markers)
        for number in range(1 + MAX_EXTRA_PASSES):
            await self._run(stage, wanted, environment, upgrades, progress, started, deadline)
            now = await asyncio.to_thread(read_distributions, stage, top_level=False)
            left = unmet(roots, now, base, markers)
            if not left:
                return (), now
            if number < MAX_EXTRA_PASSES and progress is not None:
                shown = ", ".join(str(r) for r in left)
                await progress(
                    time.monotonic() - started,
                    f"the kernel environment does not meet {shown}: installing it too",
                )
            wanted += [r for r in left if str(r) not in {str(w) for w in wanted}]
        notes = tuple(f"Still unmet after the install: {r}" for r in left)
        return notes, now

    async def _run(
        self,
        stage: Path,
        wanted: Sequence[Requirement],
        environment: KernelEnvironment,
        upgrades: Sequence[str],
        progress: uv.ProgressCallback | None,
        started: float,
        deadline: float,
    ) -> None:
        settings = self.settings
        for folder in (settings.cache_dir, settings.home_dir, settings.home_dir / "tmp"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        wanted_names = {canonicalize_name(r.name) for r in wanted}
        in_stage = set(await asyncio.to_thread(read_distributions, stage, top_level=False))
        excluded = sorted(set(environment.distributions) - wanted_names - in_stage)
        with tempfile.TemporaryDirectory(dir=settings.home_dir / "tmp") as scratch:
            excludes = None
            if excluded:
                excludes = Path(scratch) / "excludes.txt"
                excludes.write_text("".join(f"{name}\n" for name in excluded))
            argv = uv.command(
                settings.uv_path or uv.find_uv(),
                python=environment.python,
                target=stage,
                requirements=[str(r) for r in wanted],
                excludes=excludes,
                index_url=settings.index_url,
                upgrade=upgrades,
            )
            env = uv.uv_environment(home=settings.home_dir, cache=settings.cache_dir)
            try:
                run = await uv.run_uv(
                    argv, env, deadline=deadline, started=started, progress=progress
                )
            except InstallFailed as exc:
                if exc.status == "timeout":
                    raise self._timeout() from None
                raise
        if run.returncode != 0:
            raise uv.classify(run, index_url=settings.index_url, markers=environment.markers)

    def _timeout(self) -> InstallFailed:
        return InstallFailed(
            "timeout",
            f"The install took longer than {self.settings.timeout_s:g} s and was stopped "
            "(KERNEL_MCP_PACKAGES_TIMEOUT); nothing was installed",
        )
