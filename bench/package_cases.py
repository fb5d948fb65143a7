"""Case (p): installing packages for a session, with the installer itself (no server).

Two installs, each into a fresh session folder and from a warm cache (one install
first fills the cache, and is reported on its own), and the small one again into a
live session over a real server (``install_packages``, then the import in ``run_code``):

* a small pure wheel with one dependency (``kmcp-app``, from ``tests/package_index.py``)
  from an index this case builds and serves on loopback;
* pandas (and numpy, python-dateutil, tzdata with it) from the index
  ``KERNEL_MCP_PACKAGE_INDEX`` names, else uv's default (the public index), into a
  kernel environment that has none of them (a bare virtualenv of this interpreter).

Every install is the installer's whole path: the plan, the staged copy of the
folder, uv (which still asks the index whether its cached pages are current: that
round trip is part of the figure), the dependency check, the size check and the
switch to the new tree. The cache is the case's own, in the scratch folder.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness import Bench, Calls, client, mcp_url, summary, timed_call, with_errors
from kernel_mcp.packages import (
    EnvironmentProbe,
    Installer,
    InstallerSettings,
    InstallFailed,
    PackageFolder,
    parse_requirements,
)
from kernel_mcp.packages.uv import display_index, find_uv
from tests.package_index import build_index, serve_index, standard_projects

__all__ = ["case_p"]


def _bare_venv(folder: Path) -> Path:
    """A virtualenv of this interpreter with nothing installed; its python."""
    venv = folder / "venv"
    subprocess.run(
        [str(find_uv()), "venv", "--quiet", "--python", sys.executable, str(venv)],
        check=True,
        env={"PATH": os.defpath, "HOME": str(folder), "UV_NO_CONFIG": "1"},
    )
    return venv / "bin" / "python"


async def _installs(
    bench: Bench, settings: InstallerSettings, python: Path, asked: list[str], n: int, name: str
) -> dict[str, Any]:
    environment = await EnvironmentProbe().environment(python)
    installer = Installer(settings)
    requirements = parse_requirements(asked)
    cold = await installer.install(
        requirements, PackageFolder(bench.tmp / f"{name}-cold"), environment
    )
    seconds = []
    for i in range(n):
        folder = PackageFolder(bench.tmp / f"{name}-{i}")
        result = await installer.install(requirements, folder, environment)
        seconds.append(result.duration_s)
        await asyncio.to_thread(folder.remove)
    return {
        "warm": summary(seconds),
        "cold_ms": round(cold.duration_s * 1000, 1),
        "installed": [str(d) for d in cold.installed],
        "folder_mb": round(cold.folder_bytes / 2**20, 1),
    }


async def _live_installs(server: Any, n: int) -> dict[str, Any]:
    """install_packages(["kmcp-app"]) into a live session over /mcp, each into a new
    session, from a warm cache (the first install fills it); the import checked after."""
    calls, imports = Calls(), Calls()
    async with client(mcp_url(server)) as c:
        for i in range(n + 1):
            made = await timed_call(c, "create_session", {})
            sid = made.structured_content["session_id"]
            args = {"session_id": sid, "packages": ["kmcp-app"]}
            await timed_call(c, "install_packages", args, calls if i else None)
            code = {"session_id": sid, "code": "import kmcp_app; print(kmcp_app.VERSION)"}
            await timed_call(c, "run_code", code, imports if i else None, expect="1.0")
            await timed_call(c, "close_session", {"session_id": sid})
    return {
        "install": with_errors(summary(calls.seconds), calls),
        "first_import": with_errors(summary(imports.seconds), imports),
    }


def case_p(bench: Bench) -> dict[str, Any]:
    """A small pure wheel, and pandas, into fresh session folders from a warm cache."""
    out: dict[str, Any] = {}
    python = _bare_venv(bench.folder("p-kernel-env"))
    marker = bench.tmp / "p-setup-py-ran"
    index_root = bench.tmp / "p-index"
    build_index(index_root, standard_projects(bench.tmp / "p-built", marker=marker))
    with serve_index(index_root) as index:
        print("(p) a small pure wheel from a loopback index", flush=True)
        settings = InstallerSettings(data_dir=bench.folder("p-data-small"), index_url=index.url)
        small = asyncio.run(
            _installs(bench, settings, python, ["kmcp-app"], bench.n(30, 5), "small")
        )
        live = bench.on_server(
            "kernel-mcp-p",
            "(p) install_packages into a live session over /mcp",
            lambda server: _live_installs(server, bench.n(20, 3)),
            pool_size=2,
            extra={
                "KERNEL_MCP_PACKAGE_INDEX": index.url,
                "KERNEL_MCP_PACKAGES_CACHE_DIR": str(bench.folder("p-data-live")),
            },
        )
    out["p_small_wheel_warm"] = small.pop("warm")
    out["p_small_wheel_detail"] = small
    out["p_live_session_install"] = live["install"]
    out["p_live_session_first_import"] = live["first_import"]

    index_url = os.environ.get("KERNEL_MCP_PACKAGE_INDEX") or None
    where = display_index(index_url)
    print(f"(p) pandas from {where}", flush=True)
    settings = InstallerSettings(data_dir=bench.folder("p-data-pandas"), index_url=index_url)
    try:
        pandas = asyncio.run(
            _installs(bench, settings, python, ["pandas"], bench.n(15, 3), "pandas")
        )
    except InstallFailed as exc:
        out["p_pandas_skipped"] = f"{where}: {exc} ({exc.status})"
        return out
    out["p_pandas_warm"] = pandas.pop("warm")
    out["p_pandas_detail"] = {**pandas, "index": where}
    return out
