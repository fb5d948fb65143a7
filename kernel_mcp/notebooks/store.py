"""The notebooks folder: where recordings, exports and executed copies live, and who may read them.

::

    <notebooks>/sessions/<name>.ipynb     session recordings (see ``recording``)
    <notebooks>/runs/<stem>.ipynb         fresh runs saved with save_notebook, executed notebooks
    <notebooks>/<name>.ipynb              exports

File modes: exports and ``runs/`` get the mode the umask gives (other users, a
JupyterHub, can read them); session recordings are private (0600) when tokens
make sessions private, and follow the umask otherwise.

Access: with tokens, a session recording is listed and readable only by the
principal whose live session it records (:meth:`NotebookStore.readable`).
Everything else is shared by all principals.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nbformat import NotebookNode

from kernel_mcp.errors import FileNotFound, InvalidArgument, NotebookExists
from kernel_mcp.files.write import umask_mode, write_atomically
from kernel_mcp.notebooks.model import write_notebook
from kernel_mcp.files.guard import is_text_name
from kernel_mcp.files.names import validate_name

__all__ = ["RUNS", "SESSIONS", "NotebookStore"]

SESSIONS = "sessions"
RUNS = "runs"


class NotebookStore:
    """The notebooks folder. Paths handed out are absolute; names and URIs are relative."""

    def __init__(self, root: Path, *, private_recordings: bool) -> None:
        self.root = root
        self.private_recordings = private_recordings
        self.shared_mode = umask_mode()
        self.recording_mode = 0o600 if private_recordings else self.shared_mode
        # A read-only or missing folder must not stop the server: runs still reply,
        # and recording catches up once the folder can be written (``recording``).
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return f"notebook://{rel.removesuffix('.ipynb')}"

    def name_of(self, path: Path) -> str:
        """``sessions/demo`` for ``<root>/sessions/demo.ipynb``: what messages may show."""
        return path.relative_to(self.root).as_posix().removesuffix(".ipynb")

    def claim(self, folder: str, stem: str, *, mode: int) -> Path:
        """Create an empty ``<folder>/<stem>[-N].ipynb`` nobody else has; O_EXCL settles races.

        Raises:
            OSError: the folder cannot be written.
        """
        target = self.root / folder
        target.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            path = target / (f"{stem}.ipynb" if n == 1 else f"{stem}-{n}.ipynb")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
                return path
            except FileExistsError:
                n += 1

    def export_path(self, name: str) -> Path:
        stem = validate_name(name.removesuffix(".ipynb"))
        path = (self.root / f"{stem}.ipynb").resolve()
        if path.parent != self.root.resolve():
            raise InvalidArgument(f"Invalid notebook name {name!r}.")
        return path

    def export(self, text: str, name: str, *, overwrite: bool) -> Path:
        """Write an exported notebook's text to ``<root>/<name>.ipynb``.

        Raises:
            NotebookExists: the file exists and ``overwrite`` was not asked for.
            OSError: the folder cannot be written.
        """
        path = self.export_path(name)
        if path.exists() and not overwrite:
            raise NotebookExists(
                f"{path.name} exists in the notebooks folder; pass overwrite=true to replace it."
            )
        write_atomically(path, text, mode=self.shared_mode)
        return path

    def save_single(self, stem: str, nb: NotebookNode) -> Path:
        """Write a one-off notebook under ``runs/`` with a unique name.

        Raises:
            OSError: the folder cannot be written.
        """
        path = self.claim(RUNS, stem, mode=self.shared_mode)
        write_notebook(path, nb, mode=self.shared_mode)
        return path

    def list(self) -> list[str]:
        """Names of every notebook in the folder, e.g. ``sessions/abc`` or ``report``.

        A name that is not UTF-8 (the server never writes one; a process with access to
        the folder may) is left out: no resource URI can carry it.
        """
        names = []
        for path in sorted(self.root.rglob("*.ipynb")):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if not is_text_name(str(rel)):
                continue
            names.append(rel.as_posix().removesuffix(".ipynb"))
        return names

    def path_of(self, name: str) -> Path:
        """The file behind a listed name, checked to stay inside the folder.

        Raises:
            InvalidArgument: not a notebook name.
            FileNotFound: no such notebook.
        """
        parts = name.removesuffix(".ipynb").split("/")
        if not 1 <= len(parts) <= 2:
            raise InvalidArgument(f"Invalid notebook name {name!r}.")
        for part in parts:
            validate_name(part)
        path = self.root.joinpath(*parts[:-1], f"{parts[-1]}.ipynb")
        real = path.resolve()
        if not str(real).startswith(str(self.root.resolve()) + os.sep) or not real.is_file():
            raise FileNotFound(f"No notebook {name!r}.")
        return real

    def read(self, name: str) -> str:
        """The JSON text of a notebook, by its listed name."""
        try:
            return self.path_of(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise FileNotFound(f"Notebook {name!r} cannot be read ({exc.strerror}).") from None

    # -- who may read what ---------------------------------------------------------
    def readable(self, name: str, mine: set[str]) -> bool:
        """Whether a principal whose live sessions record ``mine`` may read ``name``.

        Without tokens every client shares one namespace and reads everything.
        With tokens, ``sessions/…`` is private to the owner of the live session.
        """
        name = name.removesuffix(".ipynb")
        if not self.private_recordings or not name.startswith(f"{SESSIONS}/"):
            return True
        return name in mine
