"""The installer, on real uv and real wheels, against an index served on loopback.

The index is built here (``tests/package_index.py``): small pure wheels, one that
needs another, an sdist whose setup.py would leave a marker if it ran, a wheel for
Windows only, a large one. The kernel environment is a real virtualenv made with
uv, holding ``kmcp-base`` 1.0, and learnt through the real probe. No kernel runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from packaging.requirements import Requirement

from kernel_mcp.packages import (
    EnvironmentProbe,
    Installer,
    InstallerSettings,
    InstallFailed,
    KernelEnvironment,
    PackageFolder,
    parse_requirements,
    read_distributions,
)
from kernel_mcp.packages.uv import find_uv
from tests.package_index import (
    IndexServer,
    SilentIndex,
    built_index,
    closed_port,
    serve_index,
)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The built index's folder, and where the sdist's setup.py would write its marker."""
    return built_index(tmp_path_factory.mktemp("index"))


@pytest.fixture(scope="module")
def index(index_dir: tuple[Path, Path]) -> Iterator[IndexServer]:
    with serve_index(index_dir[0]) as server:
        yield server


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory, index: IndexServer) -> KernelEnvironment:
    """A kernel environment: a virtualenv of this interpreter with kmcp-base 1.0."""
    venv = tmp_path_factory.mktemp("kernel-env") / "venv"
    uv = str(find_uv())
    env = {"PATH": os.defpath, "HOME": str(venv.parent), "UV_NO_CONFIG": "1"}
    subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--python",
            str(python),
            "--default-index",
            index.url,
            "--cache-dir",
            str(venv.parent / "cache"),
            "kmcp-base==1.0",
        ],
        check=True,
        env=env,
    )
    return asyncio.run(EnvironmentProbe().environment(python))


@pytest.fixture
def settings(tmp_path: Path, index: IndexServer) -> InstallerSettings:
    return InstallerSettings(data_dir=tmp_path / "data", index_url=index.url, timeout_s=120)


@pytest.fixture
def folder(tmp_path: Path) -> PackageFolder:
    return PackageFolder(tmp_path / "session")


def reqs(*texts: str) -> list[Requirement]:
    return parse_requirements(texts)


def versions(folder: PackageFolder) -> dict[str, str]:
    return {name: str(d.version) for name, d in read_distributions(folder.live()).items()}


async def test_an_install_resolves_a_dependency_and_names_every_distribution_installed(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    result = await Installer(settings).install(reqs("kmcp-app"), folder, environment)

    assert [(d.name, str(d.version)) for d in result.installed] == [
        ("kmcp-app", "1.0"),
        ("kmcp-dep", "2.0"),
    ]
    assert versions(folder) == {"kmcp-app": "1.0", "kmcp-dep": "2.0"}
    live = folder.live()
    assert live is not None and (live / "kmcp_dep" / "__init__.py").is_file()
    assert (folder.path_entry / "kmcp_app" / "__init__.py").is_file()
    assert result.requirements == ("kmcp-app",)
    assert result.folder_bytes > 0


async def test_an_exact_version_is_installed_and_a_later_one_replaces_it(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    installer = Installer(settings)
    first = await installer.install(reqs("kmcp-dep==1.0"), folder, environment)
    assert [str(d) for d in first.installed] == ["kmcp-dep 1.0"]

    second = await installer.install(reqs("kmcp-dep==2.0"), folder, environment)

    assert [str(d) for d in second.installed] == ["kmcp-dep 2.0"]
    assert [str(d) for d in second.replaced] == ["kmcp-dep 1.0"]
    assert versions(folder) == {"kmcp-dep": "2.0"}
    assert [d.name for d in second.imported(["kmcp_dep.sub", "json"])] == ["kmcp-dep"]
    assert second.imported(["json", "numpy"]) == []


async def test_what_the_session_has_stays_unless_an_upgrade_is_asked(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    installer = Installer(settings)
    await installer.install(reqs("kmcp-dep==1.0"), folder, environment)

    kept = await installer.install(reqs("kmcp-dep"), folder, environment)
    assert kept.installed == ()
    assert kept.satisfied == ("kmcp-dep 1.0 (this session)",)

    upgraded = await installer.install(reqs("kmcp-dep"), folder, environment, upgrade=True)
    assert [str(d) for d in upgraded.installed] == ["kmcp-dep 2.0"]


async def test_the_kernel_environments_packages_are_used_not_installed_again(
    settings: InstallerSettings,
    folder: PackageFolder,
    environment: KernelEnvironment,
    index: IndexServer,
) -> None:
    fetched_before = len(index.downloads())

    result = await Installer(settings).install(reqs("kmcp-uses-base==1.0"), folder, environment)

    assert [str(d) for d in result.installed] == ["kmcp-uses-base 1.0"]
    assert "kmcp-base" not in versions(folder)
    assert not any("/kmcp_base-" in path for path in index.downloads()[fetched_before:])


async def test_a_version_the_kernel_environment_lacks_goes_into_the_session_folder(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    result = await Installer(settings).install(reqs("kmcp-uses-base==2.0"), folder, environment)

    assert versions(folder) == {"kmcp-uses-base": "2.0", "kmcp-base": "2.0"}
    # The kernel imported the environment's kmcp-base 1.0: it must restart to see 2.0.
    assert [d.name for d in result.imported(["kmcp_base"])] == ["kmcp-base"]


async def test_what_the_kernel_environment_already_meets_needs_no_index(
    settings: InstallerSettings,
    folder: PackageFolder,
    environment: KernelEnvironment,
    index: IndexServer,
) -> None:
    asked_before = len(index.requests)

    result = await Installer(settings).install(reqs("kmcp-base>=1"), folder, environment)

    assert result.installed == ()
    assert result.satisfied == ("kmcp-base 1.0 (kernel environment)",)
    assert len(index.requests) == asked_before
    assert versions(folder) == {}


async def test_an_extra_brings_its_own_requirements(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    result = await Installer(settings).install(reqs("kmcp-extras[fast]"), folder, environment)

    assert {str(d) for d in result.installed} == {"kmcp-extras 1.0", "kmcp-dep 2.0"}


async def test_a_requirement_whose_marker_does_not_hold_is_skipped(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    result = await Installer(settings).install(
        reqs('kmcp-dep; sys_platform == "win32"', "kmcp-app"), folder, environment
    )

    assert result.skipped == ('kmcp-dep; sys_platform == "win32"',)
    assert "kmcp-app" in versions(folder)


async def test_an_sdist_is_refused_and_its_setup_py_never_runs(
    settings: InstallerSettings,
    folder: PackageFolder,
    environment: KernelEnvironment,
    index_dir: tuple[Path, Path],
) -> None:
    with pytest.raises(InstallFailed) as refused:
        await Installer(settings).install(reqs("kmcp-sdist-only"), folder, environment)

    assert refused.value.status == "needs_build"
    assert "kmcp-sdist-only" in str(refused.value)
    assert "building from source is disabled" in str(refused.value)
    assert "kmcp-sdist-only" in refused.value.detail
    assert not index_dir[1].exists()
    assert versions(folder) == {}


@pytest.mark.parametrize(
    ("asked", "status", "words"),
    [
        (["kmcp-windows"], "no_wheel", "kmcp-windows has no wheel for this kernel (Python 3."),
        (["kmcp-nonexistent"], "not_found", "kmcp-nonexistent"),
        (["kmcp-dep==9.9"], "not_found", "kmcp-dep"),
        (["kmcp-app", "kmcp-old"], "conflict", "The requirements conflict"),
    ],
)
async def test_uvs_failures_come_back_as_clear_statuses(
    settings: InstallerSettings,
    folder: PackageFolder,
    environment: KernelEnvironment,
    asked: list[str],
    status: str,
    words: str,
) -> None:
    with pytest.raises(InstallFailed) as failed:
        await Installer(settings).install(reqs(*asked), folder, environment)

    assert failed.value.status == status
    assert words in str(failed.value)
    assert failed.value.detail  # uv's own words
    assert versions(folder) == {}


async def test_an_unreachable_index_is_named_without_its_credentials(
    tmp_path: Path, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    url = f"http://reader:hunter2@127.0.0.1:{closed_port()}/simple"
    settings = InstallerSettings(data_dir=tmp_path / "data", index_url=url)

    with pytest.raises(InstallFailed) as failed:
        await Installer(settings).install(reqs("kmcp-dep"), folder, environment)

    assert failed.value.status == "index_unreachable"
    assert "could not be reached" in str(failed.value)
    assert "***@127.0.0.1" in str(failed.value)
    assert "hunter2" not in str(failed.value) + failed.value.detail


def uv_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "uv"]


async def test_the_time_limit_stops_uv_and_leaves_the_folder_as_it_was(
    tmp_path: Path,
    settings: InstallerSettings,
    folder: PackageFolder,
    environment: KernelEnvironment,
) -> None:
    await Installer(settings).install(reqs("kmcp-dep==1.0"), folder, environment)
    with SilentIndex() as silent:
        hanging = InstallerSettings(data_dir=tmp_path / "data", index_url=silent.url, timeout_s=1)
        with pytest.raises(InstallFailed) as failed:
            await Installer(hanging).install(reqs("kmcp-app"), folder, environment)

    assert failed.value.status == "timeout"
    assert "longer than 1 s" in str(failed.value)
    assert versions(folder) == {"kmcp-dep": "1.0"}
    assert sorted(p.name for p in folder.root.iterdir()) == ["current", folder.live().name]
    assert uv_children() == []


async def test_a_cancelled_install_stops_uv_and_changes_nothing(
    tmp_path: Path, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    with SilentIndex() as silent:
        hanging = InstallerSettings(data_dir=tmp_path / "data", index_url=silent.url)
        lines: list[str] = []

        async def progress(elapsed: float, line: str) -> None:
            lines.append(line)

        task = asyncio.ensure_future(
            Installer(hanging).install(reqs("kmcp-app"), folder, environment, progress=progress)
        )
        assert await asyncio.to_thread(silent.connected.wait, 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert uv_children() == []
    assert versions(folder) == {}
    assert sorted(p.name for p in folder.root.iterdir()) == ["current", "v0"]


async def test_the_size_cap_undoes_an_install_that_would_pass_it(
    tmp_path: Path,
    index: IndexServer,
    folder: PackageFolder,
    environment: KernelEnvironment,
) -> None:
    capped = InstallerSettings(
        data_dir=tmp_path / "data", index_url=index.url, max_folder_bytes=128 * 1024
    )
    installer = Installer(capped)
    await installer.install(reqs("kmcp-dep"), folder, environment)

    with pytest.raises(InstallFailed) as failed:
        await installer.install(reqs("kmcp-big"), folder, environment)

    assert failed.value.status == "cap_reached"
    assert "over their 0.125 MiB cap" in str(failed.value)
    assert versions(folder) == {"kmcp-dep": "2.0"}


async def test_a_second_install_of_the_same_wheels_comes_from_the_cache(
    tmp_path: Path, settings: InstallerSettings, environment: KernelEnvironment, index: IndexServer
) -> None:
    installer = Installer(settings)
    await installer.install(reqs("kmcp-app"), PackageFolder(tmp_path / "one"), environment)
    downloads = len(index.downloads())

    result = await installer.install(reqs("kmcp-app"), PackageFolder(tmp_path / "two"), environment)

    assert {str(d) for d in result.installed} == {"kmcp-app 1.0", "kmcp-dep 2.0"}
    assert len(index.downloads()) == downloads


async def test_progress_reports_what_uv_does(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    lines: list[tuple[float, str]] = []

    async def progress(elapsed: float, line: str) -> None:
        lines.append((elapsed, line))

    await Installer(settings).install(reqs("kmcp-app"), folder, environment, progress=progress)

    shown = [line for _, line in lines]
    assert any(line.startswith("Resolved 2 packages") for line in shown), shown
    assert "+ kmcp-app==1.0" in shown
    assert all(elapsed >= 0 for elapsed, _ in lines)


async def test_one_install_at_a_time_per_session_the_next_one_waits(
    settings: InstallerSettings, folder: PackageFolder, environment: KernelEnvironment
) -> None:
    said = asyncio.Event()

    async def progress(elapsed: float, line: str) -> None:
        if line.startswith("waiting for this session's other install"):
            said.set()

    async with folder.lock:
        waiting = asyncio.ensure_future(
            Installer(settings).install(reqs("kmcp-dep"), folder, environment, progress=progress)
        )
        await said.wait()
        assert not waiting.done()
        assert versions(folder) == {}
    result = await waiting

    assert [str(d) for d in result.installed] == ["kmcp-dep 2.0"]


async def test_the_users_uv_and_pip_configuration_is_never_read(
    tmp_path: Path,
    settings: InstallerSettings,
    folder: PackageFolder,
    environment: KernelEnvironment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}/simple"
    home = tmp_path / "home"
    (home / ".config" / "uv").mkdir(parents=True)
    (home / ".config" / "uv" / "uv.toml").write_text(f'index-url = "{nowhere}"\nno-cache = true\n')
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(f"[global]\nindex-url = {nowhere}\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "uv.toml").write_text(f'index-url = "{nowhere}"\n')
    monkeypatch.chdir(tmp_path / "work")
    for name, value in {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "UV_INDEX_URL": nowhere,
        "UV_DEFAULT_INDEX": nowhere,
        "UV_NO_BUILD": "false",
        "UV_CONFIG_FILE": str(tmp_path / "work" / "uv.toml"),
        "PIP_INDEX_URL": nowhere,
    }.items():
        monkeypatch.setenv(name, value)

    result = await Installer(settings).install(reqs("kmcp-app"), folder, environment)

    assert {str(d) for d in result.installed} == {"kmcp-app 1.0", "kmcp-dep 2.0"}
