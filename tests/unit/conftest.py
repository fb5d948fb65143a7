"""The unit tier starts no kernel and no server: a test here that tries fails at once.

Every kernel and every server this package starts is a subprocess (jupyter_client's
launch, the fork template, bwrap, ``kernel-mcp serve``, a gateway, a redis-server);
``subprocess.Popen`` refuses to start one while a unit test runs. Other subprocesses
(``kernel-mcp --version``, ``git``) are allowed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

#: What the command line of a kernel, a fork template, a sandbox or a server holds.
FORBIDDEN = (
    "ipykernel",
    "ipykernel_launcher",
    "kernel-mcp-fork-template",
    "bwrap",
    "kernelgateway",
    "redis-server",
)


def starts_a_kernel_or_a_server(args: Any) -> str | None:
    """What in ``args`` (a Popen command) is a kernel's or a server's, or None."""
    words = [args] if isinstance(args, (str, bytes)) else list(args)
    text = " ".join(str(word) for word in words)
    for marker in FORBIDDEN:
        if marker in text:
            return marker
    serving = "serve" in text.split()
    if serving and ("kernel_mcp" in text or "kernel-mcp" in text):
        return "kernel-mcp serve"
    return None


@pytest.fixture(autouse=True)
def no_kernel_and_no_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    original = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[Any], args: Sequence[Any], *rest: Any, **kw: Any) -> None:
        marker = starts_a_kernel_or_a_server(args)
        if marker is not None:
            raise AssertionError(
                f"the unit tier starts no kernel and no server ({marker!r} in {args!r}): "
                "use tests/unit/fakes.py, or move the test to tests/integration"
            )
        original(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield
