"""A session's packages folder (staged installs made live in one step) and what is
read from folders and interpreters: distributions, importable names, markers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import packaging
import pytest
from packaging.markers import default_environment

from kernel_mcp.errors import KernelError
from kernel_mcp.packages import EnvironmentProbe, PackageFolder, read_distributions
from kernel_mcp.packages.folder import tree_bytes
from kernel_mcp.packages.uv import find_uv
from tests.package_index import wheel


def unpack(wheel_path: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel_path) as archive:
        archive.extractall(into)


def test_a_new_folder_has_an_empty_live_tree_behind_its_path_entry(tmp_path: Path) -> None:
    folder = PackageFolder(tmp_path / "session")
    assert folder.live() is None

    folder.create()

    live = folder.live()
    assert live is not None and live.is_dir() and list(live.iterdir()) == []
    assert folder.path_entry.resolve() == live.resolve()
    assert oct((tmp_path / "session").stat().st_mode & 0o777) == "0o700"


def test_a_stage_changes_nothing_live_until_it_is_committed(tmp_path: Path) -> None:
    folder = PackageFolder(tmp_path / "session")
    folder.create()
    (folder.path_entry / "old.py").write_text("OLD = 1\n")
    stage = folder.stage()
    assert os.stat(stage / "old.py").st_ino == os.stat(folder.path_entry / "old.py").st_ino

    (stage / "old.py").unlink()
    (stage / "new.py").write_text("NEW = 1\n")
    assert sorted(p.name for p in folder.path_entry.iterdir()) == ["old.py"]

    old_live = folder.live()
    old = folder.commit(stage)

    assert sorted(p.name for p in folder.path_entry.iterdir()) == ["new.py"]
    assert old == old_live and old is not None and (old / "old.py").exists()
    assert not stage.exists()
    folder.discard(old)
    assert sorted(p.name for p in folder.root.iterdir()) == ["current", folder.live().name]


def test_a_discarded_stage_leaves_the_live_tree_as_it_was(tmp_path: Path) -> None:
    folder = PackageFolder(tmp_path / "session")
    folder.create()
    (folder.path_entry / "kept.py").write_text("")
    stage = folder.stage()
    (stage / "partial.py").write_text("")

    folder.discard(stage)

    assert sorted(p.name for p in folder.path_entry.iterdir()) == ["kept.py"]
    assert sorted(p.name for p in folder.root.iterdir()) == ["current", "v0"]


def test_what_an_interrupted_server_left_is_cleaned(tmp_path: Path) -> None:
    folder = PackageFolder(tmp_path / "session")
    folder.create()
    folder.stage()
    (folder.root / "v7").mkdir()

    folder.clean()

    assert sorted(p.name for p in folder.root.iterdir()) == ["current", "v0"]


def test_remove_takes_the_whole_folder(tmp_path: Path) -> None:
    folder = PackageFolder(tmp_path / "session")
    folder.create()
    folder.remove()
    assert not folder.root.exists()


def test_sizes_count_each_file_once_and_never_follow_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 1000)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "c").symlink_to("/usr/bin/env")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d").write_bytes(b"y" * 24)

    assert tree_bytes(tmp_path) == 1024


def test_distributions_and_their_importable_names_are_read_from_a_folder(tmp_path: Path) -> None:
    built = tmp_path / "built"
    built.mkdir()
    target = tmp_path / "target"
    unpack(
        wheel(
            built,
            "Some.Thing",
            "1.2",
            requires=["dep>=1"],
            files={
                "some_thing/__init__.py": "",
                "some_thing/sub/x.py": "",
                "helper.py": "",
                "_speedups.cpython-311-x86_64-linux-gnu.so": b"",
                "bin/some-tool": "#!/bin/sh\n",
            },
        ),
        target,
    )
    unpack(wheel(built, "with-top", "2.0", top_level=True), target)

    found = read_distributions(target)

    assert sorted(found) == ["some-thing", "with-top"]
    thing = found["some-thing"]
    assert str(thing) == "Some.Thing 1.2"
    assert thing.requires == ("dep>=1",)
    assert thing.top_level == ("_speedups", "helper", "some_thing")
    assert found["with-top"].top_level == ("with_top",)
    assert read_distributions(tmp_path / "missing") == {}


async def test_the_probe_learns_an_interpreters_distributions_and_markers() -> None:
    environment = await EnvironmentProbe().environment(Path(sys.executable))

    assert environment.markers == {k: str(v) for k, v in default_environment().items()}
    assert str(environment.distributions["packaging"].version) == packaging.__version__
    assert environment.distributions["pytest"].requires


async def test_the_probe_asks_again_only_when_the_environment_changed(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    await asyncio.to_thread(
        subprocess.run,
        [str(find_uv()), "venv", "--python", sys.executable, str(venv)],
        check=True,
        env={"PATH": os.defpath, "HOME": str(tmp_path), "UV_NO_CONFIG": "1"},
    )
    probe = EnvironmentProbe()
    python = venv / "bin" / "python"
    first = await probe.environment(python)
    assert await probe.environment(python) is first
    assert "added-later" not in first.distributions

    site = next(p for p in first.path if p.name == "site-packages")
    unpack(wheel(tmp_path, "added-later", "1.0"), site)

    again = await probe.environment(python)
    assert str(again.distributions["added-later"].version) == "1.0"


async def test_an_interpreter_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="cannot run"):
        await EnvironmentProbe().environment(tmp_path / "no-python")
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    failing.chmod(0o755)
    with pytest.raises(KernelError, match="could not be read: boom"):
        await asyncio.wait_for(EnvironmentProbe().environment(failing), 60)
