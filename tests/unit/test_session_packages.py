"""runner/packages.py without a kernel: when installs are refused, how a session's tree is
published to a kernel's folder, what the kernel runs to see it, and the notebook cell."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_mcp.config import load_settings
from kernel_mcp.errors import ConfigError, PackagesDisabled
from kernel_mcp.kernels.kernelspecs import KernelCatalog
from kernel_mcp.kernels.setup import KERNEL_SETUP, SERVER_REQUEST
from kernel_mcp.packages import PackageFolder
from kernel_mcp.runner.packages import SessionPackages, _publish, activation_code, pip_cell


def packages(tmp_path: Path, *, local: bool = True, **settings: object) -> SessionPackages:
    config = load_settings(projects_dir=tmp_path, packages_cache_dir=tmp_path / "uv", **settings)
    catalog = KernelCatalog(config, local=local, default="python3")
    return SessionPackages(config, local=local, kernels=catalog)


def test_installs_are_refused_when_turned_off(tmp_path: Path) -> None:
    with pytest.raises(PackagesDisabled, match="KERNEL_MCP_PACKAGES=false"):
        packages(tmp_path, packages=False).check_enabled()


def test_installs_for_a_gateways_kernels_say_they_need_local_kernels(tmp_path: Path) -> None:
    with pytest.raises(PackagesDisabled, match="needs local kernels"):
        packages(tmp_path, local=False).check_enabled()


def test_installs_are_on_by_default_for_local_kernels(tmp_path: Path) -> None:
    packages(tmp_path).check_enabled()


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_published_tree_is_hard_links_switched_in_whole(tmp_path: Path) -> None:
    session = PackageFolder(tmp_path / "session")
    session.create()
    first = tree(session.stage(), {"mod_a/__init__.py": "A = 1\n"})
    session.commit(first)
    kernel = PackageFolder(tmp_path / "kernel")

    _publish(session.live(), kernel)
    shown = kernel.path_entry / "mod_a" / "__init__.py"
    assert shown.read_text() == "A = 1\n"
    assert os.stat(shown).st_ino == os.stat(session.live() / "mod_a" / "__init__.py").st_ino

    second = tree(session.stage(), {"mod_b.py": "B = 2\n"})
    old = session.commit(second)
    assert old is not None
    session.discard(old)
    _publish(session.live(), kernel)
    assert sorted(p.name for p in kernel.path_entry.iterdir()) == ["mod_a", "mod_b.py"]
    # Only the live tree and its symlink are left in the kernel's folder.
    assert sorted(p.name for p in kernel.root.iterdir()) == ["current", "v2"]


def test_the_activation_puts_the_folder_first_and_runs_its_pth_files(tmp_path: Path) -> None:
    folder = tree(
        tmp_path / "current",
        {"first_mod.py": "WHERE = 'packages'\n", "extra.pth": str(tmp_path / "extra") + "\n"},
    )
    tree(tmp_path / "extra", {"extra_mod.py": "X = 1\n"})
    code = (
        activation_code(folder)
        + activation_code(folder)  # twice: still once on sys.path, and first
        + "import sys, first_mod, extra_mod\n"
        f"print(sys.path.index({str(folder)!r}), sys.path.count({str(folder)!r}))\n"
        "print(first_mod.WHERE, extra_mod.X)\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0 1\npackages 1\n"


def test_an_install_is_recorded_as_a_pip_install_cell() -> None:
    cell = pip_cell(["kmcp-app", "tqdm==4.66.*", 'tomli; python_version < "3.11"'], "done\n")
    assert cell.source == (
        "%pip install kmcp-app 'tqdm==4.66.*' 'tomli; python_version < \"3.11\"'"
    )
    assert cell.outputs[0].text == "done\n"
    assert cell.metadata["kernel_mcp"]["tool"] == "install_packages"


def test_the_guards_and_the_server_mark_a_server_request_alike() -> None:
    """The guards run in the kernel and import nothing of kernel_mcp: their copy of the
    marker is the same literal."""
    marker = [
        ast.literal_eval(node.value)
        for node in ast.parse(KERNEL_SETUP).body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "SERVER_REQUEST" for t in node.targets)
    ]
    assert marker == [SERVER_REQUEST]


def test_the_package_index_must_be_an_http_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KERNEL_MCP_PACKAGE_INDEX"):
        load_settings(projects_dir=tmp_path, package_index="file:///srv/wheels")
    given = load_settings(projects_dir=tmp_path, package_index="http://127.0.0.1:8/simple/")
    assert given.package_index == "http://127.0.0.1:8/simple"
