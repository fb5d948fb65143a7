"""MCP tasks (io.modelcontextprotocol/tasks): run tools are task-capable for clients that
negotiate the extension, backed by the background-run machinery, with progress in
tasks/get; older clients call the tools as before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.launchers import ROOT

pytestmark = pytest.mark.transport


def test_run_tools_run_as_tasks_for_clients_that_ask(server):
    # The client runs in its own process: see tests/clients/tasks_client.py.
    finished = subprocess.run(
        [sys.executable, "-m", "tests.clients.tasks_client", f"{server.base}/mcp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    seen = json.loads(finished.stdout.strip().splitlines()[-1])
    assert seen["transparent"] == "42"
    assert seen["task_id"] and seen["result"] == "42" and seen["stdout_ticks"] == 40
    # tasks/get showed the run's latest line as it ran.
    assert any("tick" in message for message in seen["progress"]), seen["progress"]
    assert seen["cancelled"] == "cancelled"
    assert "cancelled" in seen["run_statuses"]
    # A handshake-era client cannot negotiate tasks and keeps the plain tool.
    assert seen["legacy_tasked"] is False and seen["legacy_result"] == "42"
