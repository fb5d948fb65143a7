"""What is installed: the kernel environment's distributions, and a folder's.

A session's packages are installed on top of its kernel environment (the
kernelspec's interpreter and its site-packages), which the sandbox shows the
kernel read-only. The installer needs to know what that environment already has,
so that ``seaborn`` uses the environment's pandas instead of a second copy, and
what environment markers hold there. uv cannot tell it: with ``--target`` it sees
the target folder only. So the interpreter is asked once, by a short stdlib-only
script (:data:`PROBE`), run as ``python -I`` (no user site, no ``PYTHON*``
variables, no working folder on ``sys.path``): its distributions as
``importlib.metadata`` finds them on its own ``sys.path`` (the first of a name
wins, as an import would), and its PEP 508 marker environment. The answer is kept
until a site-packages folder of the environment changes (an operator's
``pip install``). Running the environment's interpreter on the host is what uv
itself does to learn it; nothing of a session's folder is on its path.

A session's folder is read here without running anything: the ``*.dist-info``
folders' METADATA, RECORD and ``top_level.txt``, through ``importlib.metadata``'s
path distributions.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version

from kernel_mcp.errors import KernelError

__all__ = [
    "PROBE",
    "Distribution",
    "EnvironmentProbe",
    "KernelEnvironment",
    "read_distributions",
]

#: Runs in the kernel environment's interpreter (any Python >= 3.8): stdlib only.
PROBE = r"""
import importlib.metadata as md, json, os, platform, sys

def version(info):
    text = "%d.%d.%d" % (info.major, info.minor, info.micro)
    if info.releaselevel != "final":
        text += info.releaselevel[0] + str(info.serial)
    return text

markers = {
    "implementation_name": sys.implementation.name,
    "implementation_version": version(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
dists = []
for dist in md.distributions():
    try:
        name = dist.metadata["Name"]
        if not name:
            continue
        dists.append({
            "name": name,
            "version": dist.version,
            "requires": list(dist.requires or []),
        })
    except Exception:
        continue
site_dirs = [p for p in sys.path if p and os.path.isdir(p)]
print(json.dumps({"markers": markers, "dists": dists, "sys_path": site_dirs}))
"""


@dataclass(frozen=True)
class Distribution:
    """One installed distribution: its canonical name, version and requirements."""

    name: str
    version: Version
    #: ``Requires-Dist`` entries, as written (markers included).
    requires: tuple[str, ...] = ()
    #: The importable names it provides (packages and modules at the top of the folder).
    top_level: tuple[str, ...] = ()
    #: The name as its METADATA spells it, for messages.
    display_name: str = ""

    def __str__(self) -> str:
        return f"{self.display_name or self.name} {self.version}"


@dataclass(frozen=True)
class KernelEnvironment:
    """What a kernel environment's interpreter has, and the markers that hold there."""

    python: Path
    markers: dict[str, str]
    distributions: Mapping[str, Distribution]
    #: The folders on its ``sys.path`` (whose changes make a new probe).
    path: tuple[Path, ...] = field(default=())


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


_MODULE_SUFFIXES = (".py", ".so", ".pyd", ".pyc", ".abi3.so")


def _top_level(dist: importlib.metadata.Distribution) -> tuple[str, ...]:
    """The importable names a distribution put at the top of its folder.

    ``top_level.txt`` where the build wrote one (setuptools does), else RECORD's first
    path parts: ``pkg/…`` gives ``pkg``, ``mod.py`` and ``mod.cpython-311-….so`` give
    ``mod``; scripts (``bin/…``), ``*.dist-info``, ``*.data``, ``__pycache__`` and
    paths leaving the folder (``../../bin``) give nothing.
    """
    text = dist.read_text("top_level.txt")
    if text:
        names = {line.strip().replace("/", ".") for line in text.splitlines() if line.strip()}
        return tuple(sorted(n.split(".")[0] for n in names))
    found: set[str] = set()
    for file in dist.files or []:
        parts = PurePosixPath(str(file)).parts
        # Only what Python imports: a folder counts for its modules (not bin/'s scripts).
        if not parts or not parts[-1].endswith(_MODULE_SUFFIXES):
            continue
        first = parts[0] if len(parts) > 1 else parts[0].split(".")[0]
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".data")):
            continue
        if first.isidentifier():
            found.add(first)
    return tuple(sorted(found))


def read_distributions(
    folder: Path | None, *, top_level: bool | Collection[str] = True
) -> dict[str, Distribution]:
    """The distributions installed in ``folder`` (a ``--target`` folder), by canonical
    name; nothing is imported or run. A missing folder has none.

    ``top_level``: whose importable names to read (RECORD can be long): all, none, or
    those of the canonical names given.
    """
    if folder is None or not folder.is_dir():
        return {}
    found: dict[str, Distribution] = {}
    for dist in importlib.metadata.distributions(path=[str(folder)]):
        metadata = dist.metadata  # parsed once: .version and .requires parse it again
        name_text = metadata["Name"] if metadata else None
        version = _version(metadata["Version"] or "") if name_text else None
        if not name_text or version is None:
            continue
        try:
            name = canonicalize_name(name_text, validate=True)
        except InvalidName:
            continue
        wanted = top_level if isinstance(top_level, bool) else name in top_level
        found.setdefault(
            name,
            Distribution(
                name=name,
                version=version,
                requires=tuple(metadata.get_all("Requires-Dist") or ()),
                top_level=_top_level(dist) if wanted else (),
                display_name=name_text,
            ),
        )
    return found


def _stamp(paths: tuple[Path, ...]) -> tuple[int, ...]:
    stamps = []
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return tuple(stamps)


class EnvironmentProbe:
    """Learns kernel environments by asking their interpreters, and remembers the
    answer until one of their ``sys.path`` folders changes."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self._timeout = timeout
        self._known: dict[Path, tuple[tuple[int, ...], KernelEnvironment]] = {}
        self._lock = asyncio.Lock()

    async def environment(self, python: Path) -> KernelEnvironment:
        """The environment of the interpreter ``python``.

        Raises:
            KernelError: the interpreter could not be run, or its answer was not
                understood.
        """
        async with self._lock:
            known = self._known.get(python)
            if known is not None and known[0] == _stamp(known[1].path):
                return known[1]
            environment = await self._probe(python)
            self._known[python] = (_stamp(environment.path), environment)
            return environment

    async def _probe(self, python: Path) -> KernelEnvironment:
        env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}
        try:
            process = await asyncio.create_subprocess_exec(
                str(python),
                "-I",
                "-c",
                PROBE,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
            )
        except OSError as exc:
            raise KernelError(
                f"The kernel environment's interpreter cannot run ({exc.strerror})"
            ) from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), self._timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise KernelError(f"The kernel environment could not be read: {last[0][:200]}")
        try:
            answer = json.loads(out)
        except ValueError:
            raise KernelError("The kernel environment's answer was not understood") from None
        return self._environment(python, answer)

    @staticmethod
    def _environment(python: Path, answer: dict) -> KernelEnvironment:
        distributions: dict[str, Distribution] = {}
        for item in answer.get("dists", []):
            version = _version(str(item.get("version", "")))
            try:
                name = canonicalize_name(str(item.get("name", "")), validate=True)
            except InvalidName:
                continue
            if version is None or name in distributions:
                continue
            distributions[name] = Distribution(
                name=name,
                version=version,
                requires=tuple(str(r) for r in item.get("requires", [])),
                display_name=str(item.get("name")),
            )
        return KernelEnvironment(
            python=python,
            markers={str(k): str(v) for k, v in answer.get("markers", {}).items()},
            distributions=distributions,
            path=tuple(Path(p) for p in answer.get("sys_path", [])),
        )
