"""Case (q): what the projects folder's cap costs a fresh run in a folder of many files.

The cap (``KERNEL_MCP_PROJECTS_QUOTA_MB``) is enforced by measuring the folder; a
run starts from the size measured after the previous run's reply, so the walk is
off the call's path. Two servers over the same folder of 5,000 small files, one
with the cap (the default) and one without (``0``), get a fresh ``run_python`` in
turn; the ratio of their p50s is the cap's cost per run.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from bench.harness import Bench, kernel_mcp_server
from bench.sandbox_cases import fresh_in_turn, ratio

__all__ = ["FILES", "case_q"]

#: Files in the projects folder: a data project's checkout, a few hundred folders deep.
FILES = 5_000


def case_q(bench: Bench) -> dict[str, Any]:
    """Fresh run_python with the projects cap on against off, in a folder of FILES files."""
    projects = bench.folder("projects-q")
    shutil.copy(bench.projects / "hello_world.py", projects / "hello_world.py")
    for i in range(FILES):
        folder = projects / "data" / f"part-{i // 50:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"row-{i}.csv").write_text(f"{i},{i * i}\n")
    servers = {
        name: kernel_mcp_server(
            f"kernel-mcp-q-{name}",
            pool_size=2,
            projects=projects,
            notebooks=bench.tmp / f"notebooks-q-{name}",
            extra={"KERNEL_MCP_PROJECTS_QUOTA_MB": quota},
        )
        for name, quota in (("cap", "2048"), ("nocap", "0"))
    }
    with servers["cap"], servers["nocap"]:
        print(f"(q) fresh run_python over {FILES} files, cap on and off in turn…", flush=True)
        fresh = asyncio.run(fresh_in_turn(servers, bench.n(30, 6)))
    return {
        "q_fresh_cap": fresh["cap"],
        "q_fresh_nocap": fresh["nocap"],
        "q_fresh_ratio": ratio(fresh["cap"], fresh["nocap"]),
        "q_files": FILES,
    }
