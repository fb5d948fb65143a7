"""What the kernel-level tests share: running code on a ``Kernel`` and reading what it gave."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from kernel_mcp.kernels.execution import Execution
from kernel_mcp.kernels.kernel import Kernel

#: Touches a marker file, then loops: lets a test act once the code is surely running.
LOOP_AFTER_MARKER = (
    "import pathlib, time\npathlib.Path({marker!r}).touch()\nwhile True:\n    time.sleep(0.01)\n"
)
#: Code that ignores SIGINT (and so an interrupt by signal) and never ends.
STUBBORN = (
    "import signal\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "print('ignoring SIGINT', flush=True)\n"
    "while True:\n"
    "    pass\n"
)


async def run(kernel: Kernel, code: str, *, timeout: float = 20, grace: float = 3) -> Execution:
    return await kernel.execute(code, timeout=timeout, grace=grace)


def text(execution: Execution) -> str:
    """All stream text and text/plain data of an execution, in order."""
    parts = []
    for output in execution.outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


async def value(kernel: Kernel, expression: str) -> str:
    """The text/plain of an expression's value (the run must succeed)."""
    result = await run(kernel, expression)
    assert result.status == "ok", result
    assert result.outputs[-1]["output_type"] == "execute_result", result.outputs
    return str(result.outputs[-1]["data"]["text/plain"])


async def run_patiently(kernel: Kernel, code: str, timeout: float = 30) -> Execution:
    """:func:`run` for the sandbox and fork-server specs: a longer limit, a shorter grace."""
    return await kernel.execute(code, timeout=timeout, grace=2)


async def literal(kernel: Kernel, expression: str) -> Any:
    """The Python value of an expression (its text/plain, through ``ast.literal_eval``),
    run by :func:`run_patiently`; the run must succeed."""
    result = await run_patiently(kernel, expression)
    assert result.status == "ok", result
    return ast.literal_eval(str(result.outputs[-1]["data"]["text/plain"]))


def daemon_code(marker: str) -> str:
    """A daemon that leaves the kernel's session and tree (setsid, double fork) and sleeps
    under a number only it uses; the cell ends once the daemon runs as that sleep."""
    return (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', {marker!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        f"wanted = b'sleep\\0' + {marker!r}.encode() + b'\\0'\n"
        "def running():\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            if open(f'/proc/{pid}/cmdline', 'rb').read() == wanted: return True\n"
        "        except OSError: pass\n"
        "deadline = time.monotonic() + 10\n"
        "while not running() and time.monotonic() < deadline: time.sleep(0.01)\n"
        "print('daemon started' if running() else 'daemon missing')\n"
    )


def daemons(marker: str) -> set[int]:
    """The host pids of the daemons ``daemon_code(marker)`` started (still running)."""
    found = set()
    wanted = f"sleep\0{marker}\0".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found
