"""How a Python kernel is set up before first use: the guards' source and their settings.

The guards themselves (``kernels.guards``) run in the kernel, sent by their source
(:data:`KERNEL_SETUP`) and executed in a namespace of their own; this module says
what they are called with, and what ``input()`` says when a run cannot ask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernel_mcp.kernels.outputs import GUARD_METADATA_KEY, OutputLimits

__all__ = [
    "KERNEL_SETUP",
    "NO_STDIN_BACKGROUND",
    "NO_STDIN_MESSAGE",
    "OUTPUT_GUARD_MARKER",
    "SERVER_REQUEST",
    "guard_config",
    "setup_cell",
    "setup_config",
]

#: What input() says in a run that cannot ask anyone because its client cannot.
NO_STDIN_MESSAGE = (
    "input() needs an answer, and this run cannot ask for one: the MCP client did not "
    "declare elicitation. Put the value in the code or in a file instead."
)
#: What input() says in a background run (background=true): nobody waits on its call.
NO_STDIN_BACKGROUND = (
    "input() needs an answer, and background runs cannot ask for one: no call is waiting "
    "to pass the question on. Put the value in the code or in a file, or run it without "
    "background=true from a client that supports elicitation."
)

#: Starts an input request a guard sends to the server itself (``%pip install``), not to
#: the person: ``Kernel.server_requests`` answers it. The same literal is in the guards.
SERVER_REQUEST = "\x1dkernel-mcp:request\x1d"

#: The source of ``kernels.guards``, read, never imported, for the kernels: it defines
#: ``_kmcp_setup(config, user_ns)`` (config: :func:`setup_config`), which installs the
#: output and input guards and imports the preload (returning the preload modules that
#: failed, with why), and ``_kmcp_guard`` and ``_kmcp_input_guard`` for a spawned
#: kernel's cell (:func:`setup_cell`).
KERNEL_SETUP = Path(__file__).with_name("guards.py").read_text(encoding="utf-8")
#: The name the guards' code runs under in a kernel (tracebacks show it).
SETUP_FILENAME = "<kernel-mcp guards>"

#: Starts the notice the output guard writes when it drops a flood.
OUTPUT_GUARD_MARKER = "[kernel-mcp:"


def guard_config(limits: OutputLimits, *, local: bool) -> dict[str, str | int | bool]:
    """The output guard's settings for a kernel with these caps (``local``: its process
    is this machine's, so its fd-level echo can be muted)."""
    return {
        "marker": OUTPUT_GUARD_MARKER,
        # Leave room under the collector's caps for the guard's own notices.
        "stream_limit": max(0, limits.max_output_bytes - 256),
        "max_rich": max(0, limits.max_outputs - 1),
        "max_bytes": max(0, limits.max_output_bytes - 256),
        "metadata_key": GUARD_METADATA_KEY,
        "mute_fd_echo": local,
    }


def setup_config(limits: OutputLimits, preload: list[str]) -> dict[str, Any]:
    """What :data:`KERNEL_SETUP`'s ``_kmcp_setup`` takes, for a local kernel."""
    return {
        "output": guard_config(limits, local=True),
        "input": {"message": NO_STDIN_MESSAGE},
        "preload": list(preload),
    }


def setup_cell(output: dict[str, Any], input: dict[str, Any]) -> str:
    """The silent cell that installs both guards in a spawned kernel.

    The guards' source runs in a namespace of its own (the one name the cell binds
    in the user's, ``_kmcp_ns``, is deleted), and the settings go in as literals:
    ``repr`` of str, int and bool values is a Python literal that means exactly them.
    """
    return (
        "_kmcp_ns = {'__name__': 'kernel_mcp_guards'}\n"
        f"exec(compile({KERNEL_SETUP!r}, {SETUP_FILENAME!r}, 'exec'), _kmcp_ns)\n"
        f"_kmcp_ns['_kmcp_guard']({output!r})\n"
        f"_kmcp_ns['_kmcp_input_guard']({input!r})\n"
        "del _kmcp_ns\n"
    )
