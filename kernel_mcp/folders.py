"""Where the projects and notebooks folders are when no setting names them, and why.

A desktop client starts a stdio server in ``/`` or in whatever folder it was
itself started from, so a folder relative to the working directory would land
anywhere. The rule, for each of the two folders:

1. A setting names it (``PYTHON_PROJECTS_DIR``, ``KERNEL_MCP_NOTEBOOKS_DIR``, or
   their flags, environment variables or ``.env`` lines): that folder.
2. The working directory has a ``python_projects`` folder, so it is a kernel-mcp
   project (a checkout, or a folder made for it): ``./python_projects`` and
   ``./notebooks`` (the latter made beside it when missing).
3. Otherwise the per-user folder ``~/kernel-mcp``, with ``python_projects`` and
   ``notebooks`` in it, made on first use with a README that says what it is.
   Nothing is ever made in ``/`` (a home folder of ``/`` is refused) or in a
   working directory that is not a project.

Why ``~/kernel-mcp`` and not platformdirs' user data folder: what lands there is
the user's work (the scripts the agent wrote, the notebooks of its sessions), not
the application's data. A person opens those notebooks in JupyterLab, whose file
browser starts in the home folder and hides dot-folders (``~/.local/share``), and
looks for the files in Finder or Explorer, which hide ``~/Library`` and
``AppData``. A visible folder in the home folder is found at once on every OS.

Nothing here assumes what is inside the folders, so a later per-principal
subfolder (one per token) can sit below the chosen projects folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kernel_mcp.errors import ConfigError

if TYPE_CHECKING:  # config imports this module for its defaults
    from kernel_mcp.config import Settings

__all__ = [
    "NOTEBOOKS",
    "PROJECTS",
    "USER_FOLDER",
    "Origin",
    "default_notebooks_dir",
    "default_projects_dir",
    "describe",
    "origin",
    "prepare",
    "user_folder",
]

PROJECTS = "python_projects"
NOTEBOOKS = "notebooks"
#: The per-user folder's name, in the home folder.
USER_FOLDER = "kernel-mcp"

Origin = Literal["setting", "working directory", "per-user folder"]

README = """\
# kernel-mcp

kernel-mcp (an MCP server that runs Python for AI clients) keeps its files here,
because it was started without a folder setting from a folder that is not a
kernel-mcp project.

- `python_projects/`: the files the agent may run (`run_python`) and writes
  (`write_file`); the kernels' working directory.
- `notebooks/`: every session's runs as a Jupyter notebook (`sessions/`),
  exports, and executed notebooks (`runs/`). Open them in JupyterLab.

Other folders: set `PYTHON_PROJECTS_DIR` and `KERNEL_MCP_NOTEBOOKS_DIR` (or pass
`--projects-dir` / `--notebooks-dir`); `kernel-mcp config CLIENT` writes them
into a client's configuration.
"""


def _home() -> Path | None:
    try:
        return Path.home()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        return None


def user_folder(home: Path | None = None) -> Path:
    """``~/kernel-mcp`` (``/kernel-mcp`` when there is no home folder: refused on use)."""
    home = home if home is not None else _home()
    return (home if home is not None else Path(os.sep)) / USER_FOLDER


def _project_here(cwd: Path | None) -> Path | None:
    cwd = cwd if cwd is not None else Path.cwd()
    candidate = cwd / PROJECTS
    return cwd if candidate.is_dir() else None


def default_projects_dir(cwd: Path | None = None, home: Path | None = None) -> Path:
    """The projects folder when no setting names one (absolute)."""
    here = _project_here(cwd)
    base = here if here is not None else user_folder(home)
    return (base / PROJECTS).resolve()


def default_notebooks_dir(cwd: Path | None = None, home: Path | None = None) -> Path:
    """The notebooks folder when no setting names one (absolute)."""
    here = _project_here(cwd)
    base = here if here is not None else user_folder(home)
    return (base / NOTEBOOKS).resolve()


def origin(settings: Settings, field: Literal["projects_dir", "notebooks_dir"]) -> Origin:
    """Why ``settings`` use the folder they use."""
    if field in settings.model_fields_set:
        return "setting"
    return "working directory" if _project_here(None) is not None else "per-user folder"


def describe(settings: Settings) -> dict[str, str]:
    """Each folder with why it is used, one phrase each (the start-up banner)."""
    phrases = {}
    for field, label in (("projects_dir", "projects"), ("notebooks_dir", "notebooks")):
        folder = getattr(settings, field)
        why = origin(settings, field)  # type: ignore[arg-type]
        if why == "setting":
            reason = f"set by {settings.variable(field)} or --{label}-dir"
        elif why == "working directory":
            reason = f"the working directory has {PROJECTS}/"
        else:
            reason = f"no folder setting, and {Path.cwd()} has no {PROJECTS}/: the per-user folder"
        phrases[label] = f"{folder} ({reason})"
    return phrases


def prepare(settings: Settings) -> list[Path]:
    """Make the per-user folders the settings chose, if missing; returns what it made.

    The folders a setting names are left alone (a missing projects folder is
    refused when the settings load; the notebooks folder is made by its store).

    Raises:
        ConfigError: the per-user folder would sit directly in the file system's
            root (no home folder, or a home of ``/``).
    """
    made: list[Path] = []
    for field in ("projects_dir", "notebooks_dir"):
        if origin(settings, field) != "per-user folder":  # type: ignore[arg-type]
            continue
        folder: Path = getattr(settings, field)
        base = folder.parent
        if base.parent == Path(base.anchor):
            raise ConfigError(
                f"{settings.variable(field)}: not set, and there is no home folder to keep "
                f"{USER_FOLDER}/ in (it would be {base}); set {settings.variable('projects_dir')} "
                f"and {settings.variable('notebooks_dir')}"
            )
        if not base.is_dir():
            base.mkdir(parents=True, exist_ok=True)
            made.append(base)
            (base / "README.md").write_text(README, encoding="utf-8")
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            made.append(folder)
    return made
