"""The unit tier's own rule: a test here that starts a kernel or a server fails at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings


async def test_starting_a_real_kernel_fails_the_test(tmp_path) -> None:
    backend = LocalBackend(load_settings(projects_dir=tmp_path, pool_size=0, sandbox="off"))
    try:
        with pytest.raises(Exception, match="the unit tier starts no kernel") as refused:
            await backend.start()
    finally:
        await backend.close()
    assert "ipykernel" in str(refused.value) or "template" in str(refused.value)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "ipykernel_launcher", "-f", "x.json"],
        [sys.executable, "-m", "kernel_mcp", "serve"],
        ["kernel-mcp", "serve", "--transport", "http"],
        ["bwrap", "--unshare-net", "true"],
        ["redis-server", "--port", "0"],
    ],
)
def test_a_kernel_or_server_command_is_refused(command: list[str]) -> None:
    with pytest.raises(AssertionError, match="the unit tier starts no kernel"):
        subprocess.Popen(command)


def test_other_subprocesses_still_run() -> None:
    done = subprocess.run([sys.executable, "-c", "print('fine')"], capture_output=True, text=True)
    assert done.stdout == "fine\n"
