"""Specification of ``kernel_mcp.launch.seccomp``: the filter every sandboxed kernel runs under.

Real kernels, forked (as root, and the unprivileged way with a user namespace
each) and spawned by bwrap: every call the filter refuses on purpose fails with
EPERM (socket families with EAFNOSUPPORT, clone3 with ENOSYS so the C library
falls back to clone), from the kernel and from a process it starts, while what
notebooks use (numpy, matplotlib, subprocesses, threads, sockets) keeps working.
What happens without libseccomp: ``auto`` warns once and the banner says so,
``on`` refuses to start.
"""

from __future__ import annotations

import ast
import errno
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.errors import ConfigError, SeccompUnavailable
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.launch import forkserver, seccomp
from kernel_mcp.launch import sandbox as sandbox_module
from kernel_mcp.launch.bwrap import find_bwrap, probe
from kernel_mcp.launch.forked import ForkedProcess

pyseccomp = pytest.importorskip("pyseccomp")

pytestmark = pytest.mark.skipif(
    probe(*find_bwrap(None)).bwrap is None,
    reason="this machine cannot sandbox",
)

#: What the brief names, at least: reading other processes, the keyring, kernel attack
#: surface, mounts (old and new API) and namespaces.
REFUSED = [
    *("ptrace", "process_vm_readv", "process_vm_writev"),
    *("keyctl", "add_key", "request_key"),
    *("perf_event_open", "bpf", "userfaultfd", "kexec_load", "kexec_file_load", "io_uring_setup"),
    *("mount", "umount2", "pivot_root", "fsopen", "fsmount", "move_mount", "open_tree"),
    *("fsconfig", "fspick", "mount_setattr", "unshare", "setns"),
]


def numbers(names: list[str]) -> dict[str, int]:
    """Syscall numbers on this machine (names it does not have are left out)."""
    arch = pyseccomp.system_arch()
    found = {name: pyseccomp.resolve_syscall(arch, name) for name in names}
    return {name: nr for name, nr in found.items() if nr >= 0}


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("seccomp-projects")


@pytest.fixture(scope="module", params=["forked", "forked-userns", "spawned"])
async def backend(request: pytest.FixtureRequest, projects: Path) -> AsyncIterator[LocalBackend]:
    how = str(request.param)
    with pytest.MonkeyPatch.context() as patch:
        if how == "forked-userns":
            if forkserver.userns_per_kernel():
                pytest.skip('unprivileged, "forked" kernels get a user namespace each already')
            patch.setattr(forkserver, "userns_per_kernel", lambda: True)
        local = LocalBackend(
            load_settings(projects_dir=projects, pool_size=0, fork_kernels=how != "spawned")
        )
        assert local.sandbox is not None and local.sandbox.seccomp is not None
        yield local
        await local.close()


@pytest.fixture(scope="module")
async def kernel(backend: LocalBackend) -> AsyncIterator[Kernel]:
    started = await backend.start()
    assert isinstance(started.process, ForkedProcess) == backend.forking
    yield started
    await started.shutdown(now=True)


async def value(kernel: Kernel, code: str) -> Any:
    result = await kernel.execute(code, timeout=60, grace=2)
    assert result.status == "ok", result
    return ast.literal_eval(str(result.outputs[-1]["data"]["text/plain"]))


CALL = (
    "import ctypes, errno, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def call(nr, *args):\n"
    "    result = libc.syscall(nr, *[ctypes.c_long(a) for a in args])\n"
    "    if result == 0 and nr == CLONE:\n"
    "        os._exit(0)  # a child: the filter let it through\n"
    "    return 'ok' if result >= 0 else errno.errorcode[ctypes.get_errno()]\n"
)


async def test_every_call_refused_on_purpose_fails_with_eperm(kernel: Kernel) -> None:
    wanted = numbers(REFUSED)
    assert {"ptrace", "keyctl", "mount", "unshare", "bpf"} <= set(wanted)
    clone = numbers(["clone"])["clone"]
    code = CALL.replace("CLONE", str(clone))
    said = await value(kernel, code + f"{{n: call(nr) for n, nr in {wanted!r}.items()}}")
    assert said == dict.fromkeys(wanted, "EPERM"), said


async def test_namespaces_cannot_be_made_and_clone3_falls_back(kernel: Kernel) -> None:
    nr = numbers(["clone", "clone3"])
    code = CALL.replace("CLONE", str(nr["clone"])) + (
        f"[call({nr['clone']}, flag | 17) for flag in "
        "(0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x08000000, 0x04000000, 0x02000000)]"
        f" + [call({nr['clone3']}, 0, 0)]"
    )
    said = await value(kernel, code)
    assert said == ["EPERM"] * 7 + ["ENOSYS"], said
    # Threads and processes still start (glibc's clone3 falls back to clone).
    assert await value(
        kernel,
        "import threading, subprocess\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()\n"
        "box + [subprocess.run(['true']).returncode]",
    ) == [1, 0]


async def test_only_unix_inet_inet6_and_route_netlink_sockets_open(kernel: Kernel) -> None:
    said = await value(
        kernel,
        "import errno, socket\n"
        "def open_(*args):\n"
        "    try:\n"
        "        socket.socket(*args).close()\n"
        "        return 'ok'\n"
        "    except OSError as exc:\n"
        "        return errno.errorcode[exc.errno]\n"
        "[open_(socket.AF_UNIX), open_(socket.AF_INET), open_(socket.AF_INET6),\n"
        " open_(socket.AF_NETLINK, socket.SOCK_RAW, 0),\n"
        " open_(socket.AF_VSOCK, socket.SOCK_STREAM), open_(socket.AF_PACKET, socket.SOCK_RAW),\n"
        " open_(38, socket.SOCK_SEQPACKET), open_(socket.AF_NETLINK, socket.SOCK_RAW, 12)]",
    )
    assert said == ["ok"] * 4 + ["EAFNOSUPPORT"] * 3 + ["EPROTONOSUPPORT"], said


async def test_a_process_the_kernel_starts_is_filtered_too(kernel: Kernel) -> None:
    code = (
        "import subprocess, sys\n"
        "probe = 'import socket\\ntry:\\n socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\\n"
        "except OSError as e: print(e.errno)'\n"
        "subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True).stdout"
    )
    assert await value(kernel, code) == f"{errno.EAFNOSUPPORT}\n"


async def test_what_notebooks_use_keeps_working(kernel: Kernel) -> None:
    said = await value(
        kernel,
        "import io, socket, threading, subprocess\n"
        "import numpy as np\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 3, 2]); buffer = io.BytesIO(); plt.savefig(buffer, format='png')\n"
        "pool = [threading.Thread(target=np.linalg.inv, args=(np.eye(50),)) for _ in range(4)]\n"
        "[t.start() for t in pool]; [t.join() for t in pool]\n"
        "names = socket.getaddrinfo('localhost', 80)\n"
        "(int(np.arange(10).sum()), buffer.getvalue()[:4] == b'\\x89PNG',\n"
        " subprocess.run(['echo', 'x'], capture_output=True, text=True).stdout, bool(names))",
    )
    assert said == (45, True, "x\n", True)


# -- without libseccomp -----------------------------------------------------------------------
def no_libseccomp(folder: str) -> Any:
    raise SeccompUnavailable("libseccomp is unavailable (Unable to find libseccomp)")


@pytest.fixture
def missing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sandbox_module, "seccomp_filter", no_libseccomp)
    yield


async def test_auto_without_libseccomp_warns_once_and_says_so(
    projects: Path, missing: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        local = LocalBackend(load_settings(projects_dir=projects, pool_size=0))
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "WITHOUT a seccomp filter" in warnings[0], warnings
        assert "; no seccomp;" in local.describe()
        kernel = await local.start()  # the namespaces still hold, and kernels start
        try:
            assert await value(kernel, "1 + 1") == 2
        finally:
            await kernel.shutdown(now=True)
    finally:
        await local.close()


def test_on_without_libseccomp_refuses_to_start(projects: Path, missing: None) -> None:
    with pytest.raises(ConfigError, match="KERNEL_MCP_SANDBOX=on: no seccomp filter"):
        LocalBackend(load_settings(projects_dir=projects, pool_size=0, sandbox="on"))


async def test_the_banner_says_seccomp(projects: Path) -> None:
    local = LocalBackend(load_settings(projects_dir=projects, pool_size=0))
    try:
        assert local.sandbox is not None and local.sandbox.seccomp is not None
        assert "; seccomp;" in local.describe()
        assert seccomp.compiled() == Path(local.sandbox.seccomp.path).read_bytes()
    finally:
        await local.close()
