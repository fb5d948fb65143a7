"""The fork template: one process that imports a kernel's code once and forks kernels from it.

This file runs in the *kernel's* interpreter (which may be another environment,
without kernel_mcp installed), so it imports nothing from kernel_mcp. The
server starts it as ``python -c <this source> <control fd> <config json>``,
inside the sandbox when there is one (``kernel_mcp.launch.forkserver``).

Why a template: a kernel's start is mostly imports (ipykernel, IPython, zmq,
tornado, debugpy: about 0.5 s) and first-time work (argument parsers, compiled
patterns, the shell's magics). The template does all of it once, with no
event loop, no thread and no socket, since fork copies only the calling thread
and asyncio, tornado and zmq do not survive a fork (ipykernel PR #410). Each
child then runs ipykernel's own ``IPKernelApp.initialize`` and ``start`` on its
own connection file: its sockets, threads, event loop and shell are its own,
built after the fork. ``gc.freeze()`` before forking keeps the collector from
writing to the template's objects, so their pages stay shared.

Sandboxed, the process bwrap starts forks first, before any import, and stays as
the keeper (see _keep): the template is its child, so that the kernels outlive a
template that dies. Each kernel's init loads the kernels' seccomp filter (compiled
by the server) once it dropped its capabilities, and so does each kernel before
anything of the user's runs; the init remounts the template's root and /dev
read-only for its kernel, which gets its own /dev/pts and a 64 KiB tmpfs as its
connection folder (the server reaches its sockets through /proc/<init>/root).

Per kernel, with namespaces (the sandboxed case, the server root)::

    maker, the template's first child, forked before any import (small): keeps a
           spare B ready, PID 1 of a new PID namespace (unshare(PID), fork, setns
           back), and sends the template its PID namespace and a link to it
    template: takes the spare, sends it the request, forks C into its PID
           namespace (setns there, fork, setns back); tells the maker "next"
       B: unshare(mount, IPC, UTS[, network]), private mounts (/proc, /tmp, $HOME,
          /dev/shm, only its own connection folder), lo up, hello (its pidfd) to
          the server, drops every capability, hands C its namespaces, waits for
          C's end
       C, PID 2, at the same time: joins B's namespaces, drops every capability,
          hands the server its pidfd, setsid, rlimits, environment, cwd, argv,
          reseeded random generators, ipykernel's initialize; waits for "go" (the
          server moved it into its cgroup meanwhile), runs kernel-mcp's set-up (the
          output and input guards, the preload's names: what a spawned kernel gets
          as cells), then ipykernel's start

The two forks run side by side (what that saves: docs/benchmarks.md). B is the
namespace's init: killing it (the server holds its pidfd) ends every process in
the namespace, daemons included; it exits when C does, and the template, C's
parent, reports C's status on the control channel.

Unprivileged (the server is not root), each kernel also gets a user namespace
of its own, which must own its PID namespace, and the template cannot enter a
new one itself: it forks A, which unshares all of them (the user namespace
too) and forks B, PID 1, and exits. The template is a subreaper, so B becomes
its child. B forks C and reaps, and exits with C's status (128 + n for signal
n, as bwrap reports it); the template reports B's end. Without namespaces
(the sandbox off), the template's child itself becomes the kernel after setsid.

Python 3.11 has no ``os.unshare`` or ``mount``, so those go through libc with
ctypes; all of it runs between fork and the kernel's first instruction.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

try:  # as the fork server runs it: launch/wire.py is written beside this script
    import kmcp_fork_wire as wire  # type: ignore[import-not-found]
except ImportError:  # imported as part of kernel_mcp (the tests read its constants)
    from kernel_mcp.launch import wire

# -- libc --------------------------------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 0x4000, 1 << 18
MS_SYNCHRONOUS, MS_MANDLOCK, MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 16, 64, 1024, 2048, 1 << 21
#: statvfs's ST_* flag -> the MS_* flag a remount must repeat (a user namespace may not
#: clear nosuid, nodev, noexec or the atime flags of a mount it did not make).
KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_SYNCHRONOUS, MS_SYNCHRONOUS),
    (os.ST_MANDLOCK, MS_MANDLOCK),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
MNT_DETACH = 2
#: What bwrap covers read-only in every /proc it mounts (writable there for a root
#: mapped to the host's root: sysctls, the magic SysRq key): covered in ours too.
PROC_COVERED = ("sys", "sysrq-trigger", "irq", "bus")
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
#: Process names (comm, 15 characters at most): every forked process's command line is
#: the template's, so ps, pgrep and the tests tell them apart by name.
NAMES = {
    "template": "kmcp-template",
    "maker": "kmcp-nsmaker",
    "spare": "kmcp-nsspare",
    "init": "kmcp-nsinit",
    "kernel": "kmcp-kernel",
    "keeper": "kmcp-keeper",
}
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
PTRACE_DETACH = 17
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_LAUNCHER = "ipykernel_launcher"
#: A kernel's connection folder: its sockets and its connection file need a few inodes
#: and no data.
CONNECTION_TMPFS = "size=64k,nr_inodes=64,mode=0755"
_PARSED = False
#: kernel-mcp's kernel set-up (its output and input guards, the preload's names),
#: compiled once here; each child runs it before it answers anything.
_SETUP = None

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
#: Looked up here, once: a child would otherwise pay for each symbol's first use.
for _symbol in ("capset", "mount", "prctl", "ptrace", "setns", "umount2", "unshare"):
    getattr(_libc, _symbol)
del _symbol


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _setns(fd: int, flags: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(flags)), "setns")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(MNT_DETACH)), f"umount {target}")


def _cover_proc() -> None:
    """Make the security-sensitive parts of a fresh /proc read-only, as bwrap does."""
    for name in PROC_COVERED:
        path = f"/proc/{name}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _uncover_proc() -> None:
    """Undo bwrap's covers on the template's own /proc.

    Linux lets a user namespace mount a new proc only where a fully visible one is
    mounted already (mount_too_revealing); bwrap's read-only covers make its /proc
    count as hidden, so no child could mount its own. The template runs none of
    the user's code, and every child covers its own /proc again.
    """
    for name in PROC_COVERED:
        with contextlib.suppress(OSError):
            _umount(f"/proc/{name}")


def _remount_readonly(path: str) -> None:
    """Make the mount at ``path`` (that one only, not those below it) read-only."""
    flags = os.statvfs(path).f_flag
    kept = 0
    for st_flag, ms_flag in KEPT_FLAGS:
        if flags & st_flag:
            kept |= ms_flag
    _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


#: The kernels' seccomp filter, compiled by the server (``kernel_mcp.launch.seccomp``)
#: and read here once; each kernel and its init load it (``_load_seccomp``).
_SECCOMP: tuple[ctypes.Array, _SockFprog] | None = None
_FILTERED = False


def _read_seccomp(path: str) -> None:
    global _SECCOMP
    with open(path, "rb") as file:
        program = file.read()
    if not program or len(program) % 8:
        raise ValueError(f"not a compiled seccomp filter: {len(program)} bytes")
    buffer = ctypes.create_string_buffer(program, len(program))
    _SECCOMP = (buffer, _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p)))


def _load_seccomp() -> None:
    """Put this process (and everything it starts) under the kernels' filter. Needs
    no_new_privs (``_drop_capabilities`` sets it); irreversible."""
    global _FILTERED
    if _SECCOMP is None or _FILTERED:
        return  # a kernel its init forked inherits the init's filter
    _check(
        _libc.prctl(
            ctypes.c_int(PR_SET_SECCOMP),
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.byref(_SECCOMP[1]),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        "seccomp",
    )
    _FILTERED = True


def _exit_code(pid: int, status: int) -> int | None:
    """``status`` as Popen's returncode, or None when the child has not ended.

    A child that made this process its tracer (``ptrace(PTRACE_TRACEME)``, which the
    kernels' filter refuses: this is the second line) reports its stops here even
    without WUNTRACED; it is let go at once, its signal delivered, so that neither
    this process (a ValueError from waitstatus_to_exitcode) nor the child hangs.
    """
    if os.WIFSTOPPED(status):
        _libc.ptrace(
            ctypes.c_long(PTRACE_DETACH),
            ctypes.c_long(pid),
            ctypes.c_void_p(0),
            ctypes.c_void_p(os.WSTOPSIG(status)),
        )
        return None
    if os.WIFCONTINUED(status):
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return None


def _name(role: str) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(NAMES[role].encode()), 0, 0, 0)


def _prctl(option: int, value: int) -> None:
    _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(value),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        f"prctl {option}",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last:
            return int(last.read())
    except (OSError, ValueError):
        return 63  # every capability bit there can be; dropping an unknown one is harmless


_LAST_CAP = _last_cap()


def _drop_capabilities() -> None:
    """No capability now or after any exec (bounding set empty), and no way to gain one."""
    for cap in range(_LAST_CAP + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _loopback_up() -> None:
    """A new network namespace has lo down: IPC needs no network, but 127.0.0.1 should work."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        import fcntl

        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


# -- warming up ----------------------------------------------------------------------
def _warm(config: dict) -> dict:
    """Import and exercise everything a kernel's start touches; returns what happened."""
    started = time.perf_counter()
    import ipykernel.debugger  # debugpy: the slowest import of all
    import ipykernel.ipkernel
    import ipykernel.kernelapp
    import ipykernel.zmqshell

    # What a kernel's initialize() still imports (its pdb patch, the store
    # magic extension, tornado's asyncio loop, faulthandler).
    for name in (
        "pdb",
        "IPython.core.debugger",
        "IPython.extensions.storemagic",
        "tornado.platform.asyncio",
        "faulthandler",
    ):
        with contextlib.suppress(Exception):
            __import__(name)
    from jupyter_client.connect import write_connection_file
    from traitlets.config import Config

    failed = {}
    for name in config["preload"]:
        try:
            __import__(name)
        except Exception as exc:  # reported; the pool's prepare() says it again per kernel
            failed[name] = f"{type(exc).__name__}: {exc}"
    # A throwaway app parses the kernel's arguments (argparse, traitlets, compiled
    # patterns), and a throwaway shell runs a cell (magics, the compiler, the
    # display machinery). Neither keeps a socket or a thread.
    scratch = config["scratch"]
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    connection = os.path.join(scratch, "warm.json")
    write_connection_file(connection, transport="ipc", ip=os.path.join(scratch, "warm"))
    app = ipykernel.kernelapp.IPKernelApp()
    app.parse_command_line(["-f", connection, *config["arguments"]])
    shell_config = Config()
    shell_config.HistoryManager.enabled = False
    shell_config.HistoryManager.hist_file = ":memory:"
    shell = ipykernel.zmqshell.ZMQInteractiveShell.instance(config=shell_config)
    shell.run_cell("_ = [i for i in range(3)]\n_", store_history=False)
    ipykernel.zmqshell.ZMQInteractiveShell.clear_instance()
    del app, shell
    # The kernels' own app, its arguments parsed once here (building traitlets'
    # argparse parser is a fifth of initialize()); each child then sets its own
    # connection file. Anything odd, and the child parses them itself.
    global _PARSED
    try:
        kept = ipykernel.kernelapp.IPKernelApp.instance()
        kept.parse_command_line(["-f", connection, *config["arguments"]])
        _PARSED = True
    except Exception:
        ipykernel.kernelapp.IPKernelApp.clear_instance()
    import glob

    for pattern in ("*.py", "*.ipy"):  # IPython's startup-file globs compile these once
        glob.glob(os.path.join(scratch, pattern))
    global _SETUP
    if config.get("setup_file"):
        with open(config["setup_file"], encoding="utf-8") as setup:
            _SETUP = compile(setup.read(), "<kernel-mcp setup>", "exec")
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    gc.collect()
    gc.freeze()
    import importlib.util
    import site

    global _LAUNCHER
    spec = importlib.util.find_spec("ipykernel_launcher")
    _LAUNCHER = (spec.origin if spec else None) or "ipykernel_launcher"
    return {
        "op": "ready",
        "warm_s": round(time.perf_counter() - started, 3),
        "failed": failed,
        "threads": threads,
        "site": [p for p in site.getsitepackages() if os.path.isdir(p)],
        "python": sys.version.split()[0],
    }


# -- one kernel -------------------------------------------------------------------------
def _highest_fd() -> int:
    """The highest fd open here: a child closes up to it (see _close_others)."""
    return max(int(name) for name in os.listdir("/proc/self/fd"))


#: Set by the parent just before each fork: the highest fd the child may inherit.
_TOP = 1024


def _fork_child() -> int:
    """os.fork, with ``_TOP`` set for the child."""
    global _TOP
    _TOP = _highest_fd()
    return os.fork()


def _close_others(*keep: int) -> None:
    """In a forked child: close every fd but stdio and ``keep`` (nothing of the
    template's reaches a kernel: not its control socket, not a file some import
    left open). Ranges up to ``_TOP`` rather than a listing of /proc/self/fd: a
    quarter of the time, in every child."""
    low = 3
    for fd in sorted({*keep, _TOP + 1}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def _stdio(channel: int, stderr: int) -> socket.socket:
    """stdin and stdout on /dev/null, stderr the kernel's; returns its channel."""
    sock = socket.socket(fileno=channel)
    os.dup2(stderr, 2)
    os.close(stderr)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    return sock


def _adopt(channel: int, stderr: int, *keep: int) -> socket.socket:
    """In a child the template forked: only its own fds, Python's signal defaults and
    its stdio; returns its channel to the server."""
    signal.set_wakeup_fd(-1)
    _close_others(channel, stderr, *keep)
    # The template's only handler; the rest are Python's defaults already (SIGPIPE
    # ignored, SIGINT raising KeyboardInterrupt), as in a spawned kernel.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return _stdio(channel, stderr)


def _in_child(body: Callable[..., object]) -> Callable[..., NoReturn]:
    """For the entry point of a forked child: the process ends when ``body`` does,
    with code 0, or 70 (its traceback on stderr) if it raised. Whatever happens, it
    never falls back into its parent's loop."""

    @functools.wraps(body)
    def run(*args: Any) -> NoReturn:
        code = 70
        try:
            body(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    return run


@_in_child
def _child(request: wire.ForkRequest, channel: int, stderr: int) -> None:
    """In the forked child: become a kernel (through A, B and C when it needs a user
    namespace of its own). Never returns."""
    handoff = request.handoff
    sock = _adopt(channel, stderr, *([handoff] if handoff is not None else []))
    if request.namespaces:
        _namespaced(request, sock)
    else:
        os.setsid()
        # Plain: the template's end (or the server's) ends this kernel too.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _hello(sock, "hello")
        _kernel(request, sock)


def _hello(sock: socket.socket, op: str) -> None:
    """Hand the server a pidfd of this process (``op``: "hello" from the process that
    ends the kernel, "kernel" from the kernel itself)."""
    pidfd = os.pidfd_open(os.getpid())
    wire.send(sock, {"op": op}, [pidfd])
    os.close(pidfd)


def _wait_go(sock: socket.socket) -> None:
    """Block until the server says go: it has moved this kernel into its cgroup."""
    answer, fds = wire.recv(sock)
    for fd in fds:
        os.close(fd)
    if not answer or answer.get("op") != "go":
        raise SystemExit(71)


def _enter_namespaces(request: wire.ForkRequest, *, pid: bool) -> None:
    """B (or A): unshare the kernel's namespaces (its PID namespace too with ``pid``),
    and map its user namespace when it has one of its own. _private_mounts follows."""
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if pid:
        flags |= CLONE_NEWPID
    if not request.network:
        flags |= CLONE_NEWNET
    uid, gid = os.getuid(), os.getgid()
    if request.userns:
        # Unprivileged: a user namespace per kernel makes RLIMIT_NPROC count this
        # kernel's processes only (the count is per user per namespace).
        flags |= CLONE_NEWUSER
    _unshare(flags)
    if request.userns:
        with open("/proc/self/setgroups", "w") as file:
            file.write("deny")
        with open("/proc/self/uid_map", "w") as file:
            file.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as file:
            file.write(f"{gid} {gid} 1")


def _private_mounts(request: wire.ForkRequest) -> None:
    """B, PID 1 of the kernel's namespaces: its /proc, /tmp, $HOME, /dev/shm and
    /dev/pts, its own connection folder, nothing writable that another kernel shares
    (the template's root and /dev made read-only here); lo up when it has a network
    namespace of its own."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # What must stay visible below the private mounts (its connection file, and
    # shared folders below /tmp or $HOME: a venv in ~/project, the projects folder)
    # stays reachable by fd once a tmpfs hides its path. Opened in this mount
    # namespace: a bind's source must be one of its own mounts.
    connection = os.path.join(request.folder, "kernel.json")
    # Its session's packages (install_packages), read-only: the server writes there.
    packages = os.path.join(request.folder, "packages")
    kept = [*request.keep, (connection, True), (packages, True)]
    workspace = request.workspace
    if workspace:
        # A principal's own folder: nothing else of the projects folder stays in sight.
        projects = request.projects
        kept = [(path, ro) for path, ro in kept if not _below(path, projects)]
        kept.append((workspace, request.projects_readonly))
    keep = [
        (path, readonly, os.open(path, os.O_PATH | os.O_CLOEXEC))
        for path, readonly in kept
        if os.path.exists(path)
    ]
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if request.userns:
        with open("/proc/sys/user/max_user_namespaces", "w") as file:
            file.write("0")  # as bwrap's --disable-userns: no namespaces of its own
    _cover_proc()
    size = request.tmp_bytes
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    # A $HOME below /tmp (HOME=/tmp in many containers) is gone under the new /tmp.
    os.makedirs(request.home, exist_ok=True)
    _mount("tmpfs", request.home, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0700")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    # Its own pseudo-terminals: the template's devpts is every kernel's.
    _mount(
        "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620"
    )
    # The connection folder: a tiny tmpfs of its own over the shared root (wherever it
    # is; below /tmp it is gone already) holding its connection file, read-only, and
    # the kernel's sockets. Nothing of it is on the host's disk; the server connects
    # through /proc/<this process>/root.
    root = os.path.dirname(request.folder)
    os.makedirs(root, exist_ok=True)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, CONNECTION_TMPFS)
    if workspace and os.path.isdir(request.projects):
        _mount("tmpfs", request.projects, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    for path, readonly, fd in sorted(keep, key=lambda item: item[0].count("/")):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        elif not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        if readonly:
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    os.chmod(root, 0o700)
    # The template's root (bwrap's tmpfs: /etc, /home, every mount point) and its /dev
    # are one file system for all its kernels: read-only here, so that nothing one
    # kernel writes there reaches another, or outlives it.
    _remount_readonly("/dev")
    _remount_readonly("/")
    if not request.network:
        _loopback_up()


def _below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _namespaced(request: wire.ForkRequest, sock: socket.socket) -> None:
    """A, then B, unprivileged: A unshares every namespace, its user namespace too,
    forks B (PID 1 of the new PID namespace) and exits; B forks the kernel and reaps."""
    handoff = request.handoff
    _enter_namespaces(request, pid=True)
    init = os.fork()
    if init:
        os.write(handoff, str(init).encode())
        os._exit(0)  # A: B is the template's child now (the template is a subreaper)
    os.close(handoff)
    # B: PID 1 of the new namespace.
    _name("init")
    _private_mounts(request)
    _hello(sock, "hello")
    _drop_capabilities()
    _load_seccomp()
    kernel = os.fork()
    if kernel == 0:
        _kernel(request, sock)
    sock.close()
    while True:  # reap; end with the kernel (its namespace ends with this process)
        pid, status = os.waitpid(-1, 0)
        code = _exit_code(pid, status)
        if pid == kernel and code is not None:
            os._exit(128 - code if code < 0 else code)


#: The namespaces a kernel joins, in the order it joins them (its mounts last: joining
#: a mount namespace moves its root and working directory there).
JOINED = (("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("mnt", CLONE_NEWNS))


@_in_child
def _maker(sock: socket.socket) -> None:
    """The namespace maker: keeps one spare init, B, PID 1 of a new PID namespace.

    It is the template's first child, forked before any import, so a fork of it
    costs a tenth of one of the template (its page tables are small), and each
    init owns only the few pages it writes. It sends the template each spare
    ("spare": its PID namespace and a link to it, or "failed") and makes the next
    when the template says "next", which it does once it has forked a kernel
    into the last one: making a spare never competes with a kernel's fork.
    SIGCHLD ignored: its children, and the processes each init adopts, are
    reaped by Linux. Never returns.
    """
    _name("maker")
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        try:
            link, ns = _spare(own)
        except OSError as exc:
            wire.send(sock, {"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
        else:
            wire.send(sock, {"op": "spare"}, [ns, link.fileno()])
            os.close(ns)
            link.close()
        request, fds = wire.recv(sock)
        for fd in fds:
            os.close(fd)
        if request is None:
            break


def _spare(own: int) -> tuple[socket.socket, int]:
    """Fork a spare init into a new PID namespace; returns its link and the namespace."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        _unshare(CLONE_NEWPID)
        try:
            if _fork_child() == 0:
                _init(theirs.fileno())
            ns = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _setns(own, CLONE_NEWPID)
    except OSError:
        mine.close()
        raise
    finally:
        theirs.close()
    return mine, ns


@_in_child
def _init(link: int) -> None:
    """B, a spare of the maker's, PID 1 of a PID namespace. Never returns.

    Given a request by the template (with the kernel's channel, stderr and its
    link to the kernel), it makes the kernel's other namespaces and mounts, says
    hello (its pidfd: killing it ends the namespace), drops every capability and
    hands the namespaces to the kernel, C, which the template forks into this PID
    namespace meanwhile. Then it waits for C's end and exits, which ends every
    process left in the namespace; those C leaves behind are reparented to it and
    reaped (SIGCHLD ignored).
    """
    _close_others(link)
    _name("spare")
    template = socket.socket(fileno=link)
    message, fds = wire.recv(template)
    template.close()
    if message is None or message.get("op") != "fork" or len(fds) != 3:
        return  # the template is gone, or it had no kernel for us
    request = wire.ForkRequest.from_message(message)
    channel, stderr, peer = fds
    sock = _stdio(channel, stderr)
    _name("init")
    _enter_namespaces(request, pid=False)
    _private_mounts(request)
    _hello(sock, "hello")
    sock.close()
    _drop_capabilities()
    _load_seccomp()
    link_to_kernel = socket.socket(fileno=peer)
    joined = [(name, flag) for name, flag in JOINED if name != "net" or not request.network]
    fds = [os.open(f"/proc/self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name, _ in joined]
    wire.send(link_to_kernel, {"op": "namespaces", "flags": [flag for _, flag in joined]}, fds)
    for fd in fds:
        os.close(fd)
    answer, pidfds = wire.recv(link_to_kernel)
    link_to_kernel.close()
    if answer and answer.get("op") == "joined" and len(pidfds) == 1:
        with selectors.DefaultSelector() as selector:
            selector.register(pidfds[0], selectors.EVENT_READ)
            while not selector.select():
                pass


@_in_child
def _joined(request: wire.ForkRequest, channel: int, stderr: int, peer: int) -> None:
    """C, forked by the template into B's PID namespace: joins B's other namespaces,
    drops every capability, hands B its pidfd and becomes the kernel. Never returns."""
    sock = _adopt(channel, stderr, peer)
    link = socket.socket(fileno=peer)
    message, fds = wire.recv(link)
    if not message or message.get("op") != "namespaces" or len(fds) != len(message["flags"]):
        raise SystemExit(71)  # B failed: it said why on the kernel's stderr
    for fd, flag in zip(fds, message["flags"], strict=True):
        _setns(fd, flag)
        os.close(fd)
    _drop_capabilities()
    pidfd = os.pidfd_open(os.getpid())
    wire.send(link, {"op": "joined"}, [pidfd])
    os.close(pidfd)
    link.close()
    _kernel(request, sock)


def _kernel(request: wire.ForkRequest, sock: socket.socket) -> None:
    """C (or A, unnamespaced): become an ordinary ipykernel. Never returns.

    The server moves this process into the kernel's cgroup while it initializes
    (moving a process between cgroups waits for an RCU grace period, about as long
    as the rest of a fork: docs/benchmarks.md); no user code runs before "go".
    """
    _name("kernel")
    if request.namespaces:
        _load_seccomp()  # before anything of the user's, after the last mount or setns
    _hello(sock, "kernel")
    if request.namespaces:
        os.setsid()  # lead its own group, so an interrupt reaches its children too
    memory, tasks = request.memory_bytes, request.max_tasks
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if tasks and request.namespaces:
        resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))
    size = request.max_file_bytes or 0
    if size:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    from ipykernel.kernelapp import IPKernelApp

    arguments = ["-f", request.connection_file, *request.arguments]
    # As `python -m ipykernel_launcher` started in the working directory has them: the
    # launcher drops the working directory from sys.path (the app adds it back).
    sys.argv = [_LAUNCHER, *arguments]
    if sys.path and sys.path[0] in ("", os.getcwd(), request.cwd):
        del sys.path[0]
    app = IPKernelApp.instance()
    if _PARSED:
        app.config.IPKernelApp.connection_file = request.connection_file
        app.connection_file = request.connection_file
        app.parse_command_line = lambda argv=None: None  # parsed in the template
    try:
        app.initialize(arguments)
        _wait_go(sock)
        failed = {}
        prepared = _SETUP is not None and request.setup is not None
        if prepared:
            namespace = {"__name__": "kernel_mcp_setup"}
            exec(_SETUP, namespace)
            failed = namespace["_kmcp_setup"](request.setup, app.kernel.shell.user_ns)
    except Exception as exc:
        # Said on the channel: past initialize, stderr is ipykernel's (the notebook's).
        wire.send(sock, {"op": "broken", "error": f"{type(exc).__name__}: {exc}"})
        raise
    wire.send(sock, {"op": "ready", "prepared": prepared, "preload_failed": failed})
    sock.close()
    app.start()
    os._exit(0)


# -- the loop -----------------------------------------------------------------------------
def _fork(
    request: wire.ForkRequest, fds: list[int], maker: socket.socket | None, own_pid_ns: int | None
) -> tuple[int, int | None]:
    """Fork the process that becomes a kernel (in the child, never returns).

    Returns its pid and, when it is A (see the module's docstring), the pipe on
    which A hands over B's pid. With the ``maker`` (see main), the template asks
    it for B and forks the kernel, C, into B's PID namespace at the same time as
    B makes the kernel's mounts: the two forks run side by side.

    Raises:
        OSError: no kernel could be forked (the channel's end tells the server).
    """
    if not request.namespaces:
        pid = _fork_child()
        if pid == 0:
            request.handoff = None
            _child(request, fds[0], fds[1])
        return pid, None
    if maker is not None and own_pid_ns is not None and not request.userns:
        spare, got = wire.recv(maker)  # sent ahead: its PID namespace and its link
        if spare is None:
            raise _MakerGone("the namespace maker is gone")
        try:
            if spare.get("op") != "spare" or len(got) != 2:
                for fd in got:
                    os.close(fd)
                raise OSError(spare.get("error") or "the namespace maker sent no spare")
            return _fork_into_spare(request, fds, got[0], got[1], own_pid_ns), None
        finally:  # the child never gets here
            with contextlib.suppress(OSError):  # gone: the next request says so
                wire.send(maker, {"op": "next"})  # after the fork: the next spare waits its turn
    handoff_read, handoff_write = os.pipe2(os.O_CLOEXEC)
    pid = _fork_child()
    if pid == 0:
        os.close(handoff_read)
        request.handoff = handoff_write
        _child(request, fds[0], fds[1])
    os.close(handoff_write)
    return pid, handoff_read


def _fork_into_spare(
    request: wire.ForkRequest, fds: list[int], ns: int, link: int, own_pid_ns: int
) -> int:
    """Hand the spare init (``link``) its request and fork the kernel into its PID
    namespace (``ns``); returns the kernel's pid. Closes ``ns`` and ``link``."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        # A spare that died takes them along: the kernel's end of the link tells it.
        with socket.socket(fileno=link) as spare, theirs, contextlib.suppress(OSError):
            wire.send(spare, request.message(), [*fds, theirs.fileno()])
        _setns(ns, CLONE_NEWPID)
        try:
            pid = _fork_child()
            if pid == 0:
                _joined(request, fds[0], fds[1], mine.fileno())
        finally:  # the child never gets here
            _setns(own_pid_ns, CLONE_NEWPID)
    finally:
        os.close(ns)
        mine.close()
    return pid


class _MakerGone(Exception):
    """The namespace maker ended: this template can fork no more namespaced kernels."""


class _Children:
    """Which child of the template is which kernel, across A handing its kernel to B.

    The keeper (see _keep) is told each kernel's pid and each end reported, so that
    it reports the ends of the kernels still running if this template dies.
    """

    def __init__(self, control: socket.socket, keeper: socket.socket | None) -> None:
        self.control = control
        self.keeper = keeper
        self.kernels: dict[int, str] = {}  # pid -> kernel id: its end is reported
        self.handing: dict[int, tuple[str, int]] = {}  # A's pid -> (id, pipe with B's pid)
        self.early: dict[int, int] = {}  # ended before we knew whose they were -> code

    def add(self, pid: int, kid: str) -> None:
        self.kernels[pid] = kid
        self._tell_keeper({"pid": pid, "id": kid})

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = _exit_code(pid, status)
            if code is None:
                continue  # stopped or continued: not an end
            if pid in self.handing:
                kid, pipe = self.handing.pop(pid)
                try:
                    handed = int(os.read(pipe, 32) or b"0")
                except (OSError, ValueError):
                    handed = 0
                os.close(pipe)
                if code != 0 or not handed:
                    self._ended(kid, code)
                elif handed in self.early:
                    self._ended(kid, self.early.pop(handed))
                else:
                    self.add(handed, kid)
            elif pid in self.kernels:
                self._ended(self.kernels.pop(pid), code)
                self._tell_keeper({"pid": pid})
            else:
                self.early[pid] = code

    def _ended(self, kid: str, code: int) -> None:
        wire.send(self.control, {"op": "exited", "id": kid, "code": code})

    def _tell_keeper(self, message: dict) -> None:
        if self.keeper is not None:
            with contextlib.suppress(OSError):
                wire.send(self.keeper, message)


def _keep(control: socket.socket, link: socket.socket, template: int) -> NoReturn:
    """The keeper: bwrap's own child, the template's parent, a subreaper. Never returns.

    A PID namespace ends with its first process, so the template, were it that
    process, would take every kernel it forked with it when it dies. The keeper is
    that process instead, forked before the imports (small), and runs nothing but
    this loop: it learns from the template which child pid is which kernel (and
    which ends the template reported), and once the template is gone it adopts the
    orphaned kernels (a subreaper), reaps them and reports their ends on the
    template's control channel, after one ``template_ended`` notice. It leaves when
    the template is gone and no kernel is left (or the server goes).
    """
    _name("keeper")
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    kernels: dict[int, str] = {}
    template_alive = True
    selector = selectors.DefaultSelector()
    selector.register(link, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    try:
        while template_alive or kernels:
            for key, _ in selector.select():
                if key.fileobj is link:
                    message, fds = wire.recv(link)
                    for fd in fds:
                        os.close(fd)
                    if message is None:
                        selector.unregister(link)
                    elif "id" in message:
                        kernels[int(message["pid"])] = str(message["id"])
                    else:
                        kernels.pop(int(message.get("pid", 0)), None)
                    continue
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    code = _exit_code(pid, status)
                    if code is None:
                        continue
                    if pid == template:
                        template_alive = False
                        wire.send(control, {"op": "template_ended", "code": code})
                    elif pid in kernels:
                        wire.send(control, {"op": "exited", "id": kernels.pop(pid), "code": code})
    except OSError:
        pass  # the server is gone: so is everything here, with bwrap
    os._exit(0)


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[1]))
    config = json.loads(argv[2])
    keeper = None
    if not config.get("plain"):
        # Sandboxed, this process is bwrap's child: it stays, as the keeper, and the
        # template is its child (see _keep). First, while this process is small.
        keeper = _hand_over_to_the_keeper(control)
    if config.get("seccomp"):
        _read_seccomp(config["seccomp"])
    _name("template")
    # As a spawned kernel's `python -m ipykernel_launcher` from the projects folder: the
    # preload (and later the kernels) import from there, not from this script's folder.
    sys.path[0] = os.getcwd()
    maker, helpers = _set_up_forking(config, control, keeper)
    helpers.insert(0, os.pidfd_open(os.getpid()))
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        ready = _warm(config)
    except BaseException as exc:
        traceback.print_exc()
        wire.send(control, {"op": "broken", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    # Where this process may put a kernel in a PID namespace (root of its user
    # namespace, no user namespace per kernel): its own, to come back to after each.
    own_pid_ns = (
        os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if config.get("no_userns")
        else None
    )
    children = _Children(control, keeper)
    # With pidfds of this process and of the maker: the server ends them itself when
    # they stop answering (a stopped template would otherwise stall every start).
    wire.send(control, ready, helpers)
    for fd in helpers:
        os.close(fd)
    return _serve(control, children, maker, own_pid_ns)


def _hand_over_to_the_keeper(control: socket.socket) -> socket.socket:
    """Fork: the parent stays as the keeper (never returns); the child, the template,
    returns its end of the keeper's socket."""
    keeper, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    template = os.fork()
    if template:
        keeper.close()
        _keep(control, theirs, template)
    theirs.close()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the keeper ends only with bwrap
    return keeper


def _set_up_forking(
    config: dict[str, Any], control: socket.socket, keeper: socket.socket | None
) -> tuple[socket.socket | None, list[int]]:
    """What this template forks kernels with: its namespace maker (as root in the
    sandbox), and the pidfds of its helpers (the maker's) for the server."""
    maker = None
    helpers = []
    if config.get("plain"):
        # Unsandboxed, nothing else ends the template with the server.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        return maker, helpers
    _uncover_proc()
    if config.get("no_userns"):
        # Children share this user namespace (as root, where bwrap's own
        # --disable-userns would leave the template unable to mount): none of
        # them, and not the template, may make another one.
        with open("/proc/sys/user/max_user_namespaces", "w") as file:
            file.write("0")
        # Before the imports, while this process is small: see _maker.
        maker, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        maker_pid = os.fork()
        if maker_pid == 0:
            control.close()
            maker.close()
            if keeper is not None:
                keeper.close()
            _maker(theirs)
        theirs.close()
        helpers.append(os.pidfd_open(maker_pid))
    return maker, helpers


def _serve(
    control: socket.socket,
    children: _Children,
    maker: socket.socket | None,
    own_pid_ns: int | None,
) -> int:
    """Fork a kernel for each request, and report the ends of the kernels, until the
    server closes the control channel."""
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is not control:
                while True:
                    try:
                        if not os.read(wake_read, 512):
                            break
                    except BlockingIOError:
                        break
                children.reap()
                continue
            message, fds = wire.recv(control)
            if message is None:
                return 0  # the server is gone or closing (it ends the kernels)
            try:
                request = wire.ForkRequest.from_message(message)
            except (ValueError, TypeError):
                request = None
            if request is None or len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                pid, handoff = _fork(request, fds, maker, own_pid_ns)
            except _MakerGone:
                traceback.print_exc()
                return 1  # the server replaces this template
            except OSError:
                # Said on the template's stderr; the server sees the channel end unanswered.
                traceback.print_exc()
                continue
            finally:
                for fd in fds:
                    os.close(fd)
            if handoff is not None:
                children.handing[pid] = (request.id, handoff)
            else:
                children.add(pid, request.id)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
