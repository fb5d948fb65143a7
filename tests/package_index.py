"""A package index the tests build and serve themselves, on loopback.

Wheels are made here with the standard library's ``zipfile`` (a real wheel: METADATA,
WHEEL, RECORD with hashes), so nothing is fetched to build them. The sdist-only
package's ``setup.py`` writes a marker file if anything ever runs it: the tests
check that the marker never appears. The index is a PEP 503 simple index (one
``simple/<name>/index.html`` per project, links with ``#sha256=``) served by
``http.server`` in a thread on 127.0.0.1 and a free port.

Besides the working index there are two broken ones: :func:`closed_port` (nothing
listens: connection refused) and :class:`SilentIndex` (a socket that takes
connections and never answers), for the unreachable and time-limit cases.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import html
import http.server
import io
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "IndexServer",
    "Project",
    "SilentIndex",
    "build_index",
    "closed_port",
    "sdist",
    "serve_index",
    "standard_projects",
    "wheel",
]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    files: dict[str, bytes | str] | None = None,
    tag: str = "py3-none-any",
    top_level: bool = False,
) -> Path:
    """Write a wheel of ``name`` ``version`` into ``folder`` and return its path.

    ``files`` maps paths inside the wheel to their contents; by default a package
    ``<name>/__init__.py`` that sets ``VERSION``. ``top_level`` adds a
    ``top_level.txt`` (setuptools writes one; other backends do not).
    """
    module = name.replace("-", "_").replace(".", "_")
    dist = f"{module}-{version}"
    contents: dict[str, bytes] = {}
    for path, data in (files or {f"{module}/__init__.py": f"VERSION = {version!r}\n"}).items():
        contents[path] = data.encode() if isinstance(data, str) else data
    info = f"{dist}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {req}\n" for req in requires)
    contents[f"{info}/METADATA"] = metadata.encode()
    contents[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: kernel-mcp-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
    ).encode()
    if top_level:
        roots = sorted({p.split("/")[0].removesuffix(".py") for p in contents if "/" in p})
        contents[f"{info}/top_level.txt"] = "".join(
            f"{r}\n" for r in roots if not r.endswith(".dist-info")
        ).encode()
    lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in contents.items()]
    lines.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(lines) + "\n").encode()
    target = folder / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return target


def sdist(folder: Path, name: str, version: str, *, marker: Path) -> Path:
    """Write an sdist whose ``setup.py`` creates ``marker`` when it runs (it never should)."""
    base = f"{name.replace('-', '_')}-{version}"
    setup_py = (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('setup.py ran')\n"
        "from setuptools import setup\n"
        f"setup(name={name!r}, version={version!r})\n"
    )
    pyproject = (
        '[build-system]\nrequires = []\nbuild-backend = "setuptools.build_meta:__legacy__"\n'
    )
    pkg_info = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    target = folder / f"{base}.tar.gz"
    with tarfile.open(target, "w:gz") as archive:
        for path, text in (
            ("setup.py", setup_py),
            ("pyproject.toml", pyproject),
            ("PKG-INFO", pkg_info),
        ):
            data = text.encode()
            entry = tarfile.TarInfo(f"{base}/{path}")
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    return target


@dataclass
class Project:
    """The files one project offers on the index."""

    name: str
    files: list[Path] = field(default_factory=list)


def build_index(root: Path, files: Iterable[Path]) -> Path:
    """A PEP 503 simple index under ``root/simple`` for ``files`` (kept in ``root/files``)."""
    store = root / "files"
    store.mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[Path]] = {}
    for path in files:
        kept = store / path.name
        if path.resolve() != kept.resolve():
            kept.write_bytes(path.read_bytes())
        stem = path.name.split("-")[0]
        projects.setdefault(_normalize(stem), []).append(kept)
    simple = root / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    names = []
    for project, kept_files in sorted(projects.items()):
        (simple / project).mkdir(exist_ok=True)
        links = []
        for kept in sorted(kept_files):
            digest = hashlib.sha256(kept.read_bytes()).hexdigest()
            href = html.escape(f"../../files/{kept.name}#sha256={digest}")
            links.append(f'<a href="{href}">{html.escape(kept.name)}</a><br/>')
        (simple / project / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        )
        names.append(f'<a href="{project}/">{project}</a><br/>')
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "\n".join(names) + "\n</body></html>\n"
    )
    return simple


def standard_projects(folder: Path, *, marker: Path) -> list[Path]:
    """The projects most tests use.

    - ``kmcp-dep`` 1.0 and 2.0 (pure), and ``kmcp-app`` 1.0 that needs ``kmcp-dep>=2``;
    - ``kmcp-old`` 1.0 that needs ``kmcp-dep<2`` (with ``kmcp-app``: a conflict);
    - ``kmcp-sdist-only`` 1.0, an sdist alone, whose setup.py would write ``marker``;
    - ``kmcp-windows`` 1.0, a wheel for Windows only;
    - ``kmcp-big`` 1.0, a wheel holding 256 KiB (for the size cap);
    - ``kmcp-extras`` 1.0, whose extra ``fast`` needs ``kmcp-dep``;
    - ``kmcp-uses-base`` 1.0, which needs ``kmcp-base>=1`` (what tests install as the
      kernel environment's own package), and 2.0 which needs ``kmcp-base>=2``; and
      ``kmcp-base`` 1.0 and 2.0.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return [
        wheel(folder, "kmcp-dep", "1.0"),
        wheel(folder, "kmcp-dep", "2.0", top_level=True),
        wheel(folder, "kmcp-app", "1.0", requires=["kmcp-dep>=2"]),
        wheel(folder, "kmcp-old", "1.0", requires=["kmcp-dep<2"]),
        sdist(folder, "kmcp-sdist-only", "1.0", marker=marker),
        wheel(folder, "kmcp-windows", "1.0", tag="cp311-cp311-win_amd64"),
        wheel(
            folder,
            "kmcp-big",
            "1.0",
            files={"kmcp_big/__init__.py": "", "kmcp_big/blob.bin": bytes(256 * 1024)},
        ),
        wheel(folder, "kmcp-extras", "1.0", requires=['kmcp-dep>=2; extra == "fast"']),
        wheel(folder, "kmcp-base", "1.0"),
        wheel(folder, "kmcp-base", "2.0"),
        wheel(folder, "kmcp-uses-base", "1.0", requires=["kmcp-base>=1"]),
        wheel(folder, "kmcp-uses-base", "2.0", requires=["kmcp-base>=2"]),
    ]


class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, and notes every path asked for (quietly)."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class IndexServer:
    """A running index: ``url`` is its simple index (``http://127.0.0.1:<port>/simple``),
    ``requests`` every path asked of it so far."""

    url: str
    port: int
    root: Path
    requests: list[str]

    def downloads(self) -> list[str]:
        """The distribution files fetched so far (not index pages)."""
        return [path for path in self.requests if path.startswith("/files/")]


def built_index(base: Path) -> tuple[Path, Path]:
    """:func:`standard_projects` built into an index under ``base``: the index's folder,
    and where the sdist's setup.py would write its marker if it ever ran."""
    marker = base / "setup-py-ran"
    build_index(base / "index", standard_projects(base / "built", marker=marker))
    return base / "index", marker


@contextlib.contextmanager
def serve_index(root: Path) -> Iterator[IndexServer]:
    """Serve ``root`` (with ``simple/`` and ``files/``) on 127.0.0.1 and a free port."""
    requests: list[str] = []
    handler_class = type("Handler", (_LoggingHandler,), {"requests": requests})
    handler = functools.partial(handler_class, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="test-index", daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        yield IndexServer(
            url=f"http://127.0.0.1:{port}/simple", port=port, root=root, requests=requests
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on (the OS gave it, then it was closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SilentIndex:
    """A loopback index that takes connections and never answers a byte: one that
    hangs. ``connected`` is set once a client has connected."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/simple"
        self.connected = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-index", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            self._held.append(connection)
            self.connected.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> SilentIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
