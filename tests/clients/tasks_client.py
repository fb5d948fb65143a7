"""A client that negotiates the MCP tasks extension, run in its own process.

Importing ``fastmcp_tasks`` makes every fastmcp ``Client`` in a process run its
calls as tasks, so this lives apart from the test process. It prints one JSON
object with what it saw; tests/integration/test_server_tasks.py reads it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from fastmcp import Client
from fastmcp.exceptions import ToolError
from fastmcp_tasks import call_tool_task

TICKER = (
    "import time\nfor i in range(40):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\n7 * 6"
)


async def main(url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with Client(url, timeout=120) as client:
        plain = await client.call_tool("run_code", {"code": "6 * 7"})
        seen["transparent"] = plain.structured_content["result"]

        task = await call_tool_task(client, "run_code", {"code": TICKER})
        seen["task_id"] = bool(task.task_id)
        messages = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = await task.status()
            if status.status_message:
                messages.append(status.status_message)
            if status.status in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        seen["progress"] = messages
        result = await task.result()
        seen["result"] = result.structured_content["result"]
        seen["stdout_ticks"] = result.structured_content["stdout"].count("tick")

        endless = await call_tool_task(
            client, "run_code", {"code": "import time\nwhile True: time.sleep(0.05)"}
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (await endless.status()).status == "working":
                break
            await asyncio.sleep(0.05)
        await endless.cancel()
        deadline = time.monotonic() + 30
        final = None
        while time.monotonic() < deadline:
            final = await endless.status()
            if final.status in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
        seen["cancelled"] = final.status if final else None
        # The task says cancelled at once; the run behind it ends once the worker has
        # delivered the cancel and the kernel was interrupted: wait for that.
        deadline = time.monotonic() + 30
        while True:
            runs = (await client.call_tool("list_runs", {})).structured_content["runs"]
            seen["run_statuses"] = sorted({r["status"] for r in runs})
            if "running" not in seen["run_statuses"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)

    async with Client(url, mode="legacy", timeout=120) as legacy:
        try:
            await call_tool_task(legacy, "run_code", {"code": "1"})
            seen["legacy_tasked"] = True
        except ToolError:
            seen["legacy_tasked"] = False
        plain = await legacy.call_tool("run_code", {"code": "6 * 7"})
        seen["legacy_result"] = plain.structured_content["result"]
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
