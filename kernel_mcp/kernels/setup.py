"""How a Python kernel is set up before first use: the guards' source and their settings.

The guards themselves (``kernels.guards``) run in the kernel; this module says
what they are called with, and what ``input()`` says when a run cannot ask.
"""

from __future__ import annotations

from typing import Any

from kernel_mcp.kernels.guards import _INPUT_GUARD, _OUTPUT_GUARD, _SETUP_CALLS
from kernel_mcp.kernels.outputs import GUARD_METADATA_KEY, OutputLimits

__all__ = [
    "KERNEL_SETUP",
    "NO_STDIN_BACKGROUND",
    "NO_STDIN_MESSAGE",
    "OUTPUT_GUARD_MARKER",
    "guard_config",
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

#: Defines ``_kmcp_setup(config, user_ns)`` (config: :func:`setup_config`), which
#: installs the output and input guards and imports the preload; it returns the
#: preload modules that failed, with why.
KERNEL_SETUP = _OUTPUT_GUARD + _INPUT_GUARD + _SETUP_CALLS

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
