"""The projects and notebooks folders without a setting: the working directory's when it
is a kernel-mcp project, else ~/kernel-mcp, made on first use with a README; never a
folder in ``/`` or in a working directory that is not a project. The banner says which
folders and why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel_mcp import folders
from kernel_mcp.config import load_settings
from kernel_mcp.errors import ConfigError


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home and a working directory in ``tmp_path``, and no folder setting."""
    for name in list(os.environ):
        if name.upper().startswith(("KERNEL_MCP_", "PYTHON_")):
            monkeypatch.delenv(name)
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def test_a_working_directory_with_python_projects_is_a_project(place: Path) -> None:
    work = place / "work"
    (work / "python_projects").mkdir()
    settings = load_settings()
    assert settings.projects_dir == work / "python_projects"
    assert settings.notebooks_dir == work / "notebooks"
    assert folders.origin(settings, "projects_dir") == "working directory"
    assert folders.prepare(settings) == []  # its notebooks/ is made by the store, beside it
    assert not (place / "home" / "kernel-mcp").exists()


def test_elsewhere_the_per_user_folder_is_made_on_first_use(place: Path) -> None:
    settings = load_settings()
    base = place / "home" / "kernel-mcp"
    assert settings.projects_dir == base / "python_projects"
    assert settings.notebooks_dir == base / "notebooks"
    assert not base.exists(), "loading the settings makes nothing"
    made = folders.prepare(settings)
    assert made == [base, base / "python_projects", base / "notebooks"]
    readme = (base / "README.md").read_text()
    assert "python_projects/" in readme and "PYTHON_PROJECTS_DIR" in readme
    assert folders.prepare(settings) == []
    assert list((place / "work").iterdir()) == []


def test_a_notebooks_folder_alone_does_not_make_a_project(place: Path) -> None:
    (place / "work" / "notebooks").mkdir()
    settings = load_settings()
    assert settings.notebooks_dir == place / "home" / "kernel-mcp" / "notebooks"


def test_a_setting_wins_and_the_other_folder_keeps_the_rule(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = place / "mine"
    mine.mkdir()
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(mine))
    settings = load_settings()
    assert settings.projects_dir == mine
    assert folders.origin(settings, "projects_dir") == "setting"
    assert folders.origin(settings, "notebooks_dir") == "per-user folder"
    assert folders.prepare(settings) == [place / "home" / "kernel-mcp", settings.notebooks_dir]
    assert not (place / "home" / "kernel-mcp" / "python_projects").exists()


def test_a_named_folder_that_does_not_exist_is_still_refused(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(place / "missing"))
    with pytest.raises(ConfigError, match=r"^PYTHON_PROJECTS_DIR: folder .* does not exist"):
        load_settings()


def test_a_home_of_slash_is_refused_and_nothing_is_made_in_slash(
    place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/")
    monkeypatch.chdir("/")
    before = set(os.listdir("/"))
    settings = load_settings()
    with pytest.raises(ConfigError, match=r"no home folder .* set PYTHON_PROJECTS_DIR"):
        folders.prepare(settings)
    assert set(os.listdir("/")) == before


def test_describe_says_which_folder_and_why(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said = folders.describe(load_settings())
    assert said["projects"] == (
        f"{place / 'home' / 'kernel-mcp' / 'python_projects'} (no folder setting, and "
        f"{place / 'work'} has no python_projects/: the per-user folder)"
    )
    monkeypatch.setenv("KERNEL_MCP_NOTEBOOKS_DIR", str(place / "nb"))
    said = folders.describe(load_settings())
    expected = f"{place / 'nb'} (set by KERNEL_MCP_NOTEBOOKS_DIR or --notebooks-dir)"
    assert said["notebooks"] == expected
