"""Hostile programs: what a caller may run, and the status the server owes each.

Every program runs in a fresh kernel and in a session on a server with its
default settings (``tests/integration/test_hostile.py``). Whatever it does, the call gets a
reply with the expected status, the reply never carries a raw control sequence
or an absolute server path it did not print itself, and the server keeps
serving: in a session, the next call works (in the same kernel, or in a new one
with a note saying the state was lost), and ``list_files`` still lists the
projects folder.

The cases are kinds of behaviour, not replays of one attack: a failing cell of
each kind, each way a process can end, each way output can flood, each way a
program can ignore or break the machinery that stops it.
"""

from __future__ import annotations

from dataclasses import dataclass

# ROOT: where test servers run from (outside the sandbox); SECRET: in their environment.
from tests.helpers import SECRET
from tests.launchers import ROOT

__all__ = ["PROGRAMS", "Program"]


@dataclass(frozen=True)
class Program:
    id: str
    code: str
    status: frozenset[str]
    """Acceptable statuses (one, unless the outcome depends on the machine's speed)."""
    timeout: float | None = None
    contains: tuple[str, ...] = ()
    """Text the reply's text block must contain."""
    absent: tuple[str, ...] = ()
    """Text it must not contain."""
    truncated: bool | None = None


def P(
    id: str,
    code: str,
    *status: str,
    timeout: float | None = None,
    contains: tuple[str, ...] = (),
    absent: tuple[str, ...] = (),
    truncated: bool | None = None,
) -> Program:
    return Program(id, code, frozenset(status), timeout, contains, absent, truncated)


PROGRAMS: list[Program] = [
    # -- cells that fail ----------------------------------------------------------------
    P("zero_division", "1 / 0", "error", contains=("ZeroDivisionError",)),
    P("syntax_error", "def (:", "error", contains=("SyntaxError",)),
    P("surrogate_in_error", "raise ValueError('err-\\udfff-end')", "error"),
    P("surrogate_in_output", "print('a\\udcffb')", "ok"),
    P("recursion", "def f(): return f()\nf()", "error", contains=("RecursionError",)),
    P("huge_error_value", "raise ValueError('v' * 5_000_000)", "error", truncated=True),
    P("keyboard_interrupt_raised", "raise KeyboardInterrupt", "error"),
    P("system_exit", "import sys; sys.exit(3)", "error", contains=("SystemExit",)),
    P("input_without_a_client_answer", "input('name? ')", "error", contains=("input",)),
    P("memory_bomb", "x = bytearray(64 * 1024**3)", "error", contains=("MemoryError",)),
    # -- the process ends ----------------------------------------------------------------
    P("os_exit", "import os; os._exit(3)", "kernel_died", contains=("exit code 3",)),
    P(
        "sigkill_self",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "kernel_died",
        contains=("SIGKILL",),
    ),
    P("segfault", "import ctypes; ctypes.string_at(0)", "kernel_died"),
    P("abort", "import os; os.abort()", "kernel_died"),
    P("exit_builtin", "exit()", "ok", "kernel_died"),
    # -- it will not stop ------------------------------------------------------------------
    P("busy_loop", "while True: pass", "timeout", timeout=2),
    P("sleep_in_c", "import time; time.sleep(1000)", "timeout", timeout=2),
    P(
        "ignores_sigint",
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
        "timeout",
        timeout=2,
        contains=("killed",),
    ),
    P(
        "swallows_keyboard_interrupt",
        "while True:\n    try:\n        while True: pass\n"
        "    except KeyboardInterrupt:\n        pass",
        "timeout",
        timeout=2,
    ),
    P(
        "breaks_message_signing",
        "get_ipython().kernel.session.key = b'not-the-key'",
        "timeout",
        timeout=3,
    ),
    # -- floods ------------------------------------------------------------------------------
    P("print_100_mb", "print('x' * 100_000_000)", "ok", truncated=True),
    P("print_many_lines", "for i in range(300_000): print(i)", "ok", truncated=True),
    P(
        "write_without_newline",
        "import sys\nfor _ in range(20_000): sys.stdout.write('y' * 1000)",
        "ok",
        truncated=True,
    ),
    P(
        "display_flood",
        "from IPython.display import display\nfor i in range(100_000): display(i)",
        "ok",
        "timeout",
        timeout=20,
        truncated=True,
    ),
    P(
        "one_huge_display",
        "from IPython.display import HTML, display\ndisplay(HTML('x' * 20_000_000))",
        "ok",
        truncated=True,
    ),
    P(
        "stderr_flood",
        "import sys\nfor i in range(200_000): print(i, file=sys.stderr)",
        "ok",
        truncated=True,
    ),
    # -- escapes the sandbox stops (tests/integration/test_escape.py tries more, with the server's
    # -- own pid, port, token and files) -------------------------------------------------
    P(
        "read_the_server_s_source",
        f"open({str(ROOT / 'pyproject.toml')!r}).read()",
        "error",
        contains=("FileNotFoundError",),
    ),
    P(
        "write_outside_the_projects_folder",
        "open('/usr/lib/kernel-mcp-escape', 'w')",
        "error",
        contains=("Read-only file system",),
    ),
    P(
        "connect_to_loopback",
        "import socket; socket.create_connection(('127.0.0.1', 22), timeout=5)",
        "error",
        contains=("ConnectionRefusedError",),
    ),
    P(
        "secret_in_any_environment",
        "import glob\n"
        "leaks = []\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        f"        if {SECRET!r}.encode() in open(path, 'rb').read(): leaks.append(path)\n"
        "    except OSError: pass\n"
        "assert not leaks, leaks",
        "ok",
    ),
    P(
        "spawn_3000_processes",
        "import subprocess\nchildren = []\n"
        "try:\n    while len(children) < 3000: children.append(subprocess.Popen(['sleep', '60']))\n"
        "finally:\n    for c in children: c.kill()\n    for c in children: c.wait()",
        "error",
        contains=("BlockingIOError",),
    ),
    # -- tenants: what would reach other kernels (tests/integration/test_isolation.py tries each
    # -- across two principals) ---------------------------------------------------------
    P(
        "write_under_etc",
        "open('/etc/ld.so.preload', 'w').write('/tmp/evil.so')",
        "error",
        contains=("Read-only file system",),
    ),
    P(
        "write_to_the_root_and_dev",
        "for path in ('/kernel-mcp-escape', '/dev/kernel-mcp-escape'):\n"
        "    try:\n        open(path, 'w')\n"
        "    except OSError as exc:\n        print(exc.strerror)",
        "ok",
        contains=("Read-only file system\nRead-only file system",),
    ),
    P(
        "fill_the_connection_folder",
        "import os\nfolder = os.path.dirname(get_ipython().kernel.parent.connection_file)\n"
        "open(os.path.join(folder, 'filler'), 'wb').write(b'x' * 2**20)",
        "error",
        contains=("No space left on device",),
    ),
    P(
        "ptrace_traceme_then_a_child",
        "import ctypes, errno, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(0, 0, 0, 0), errno.errorcode[ctypes.get_errno()])\n"
        "subprocess.run(['true'])",
        "ok",
        contains=("-1 EPERM",),
    ),
    P(
        "add_a_key_to_the_keyring",
        "import ctypes, errno, platform\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "nr = {'x86_64': 248, 'aarch64': 217}[platform.machine()]\n"
        "print(libc.syscall(nr, b'user', b'kmcp', b'secret', 6, -4), "
        "errno.errorcode[ctypes.get_errno()])",
        "ok",
        contains=("-1 EPERM",),
    ),
    P(
        "unshare_a_user_namespace",
        "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000), errno.errorcode[ctypes.get_errno()])",
        "ok",
        contains=("-1 EPERM",),
    ),
    P(
        "open_a_vsock_socket",
        "import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)",
        "error",
        contains=("Address family not supported",),
    ),
    # -- what other principals' tools must survive -----------------------------------------
    # A file name that is not UTF-8 in the shared projects folder (list_files after it).
    P(
        "creates_a_file_name_that_is_not_utf8",
        "open(b'corpus-\\xff-name.py', 'w').write('x = 1\\n')\nimport os\n"
        "os.makedirs(b'corpus-\\xfe-dir', exist_ok=True)",
        "ok",
    ),
    # input() with no one to ask (these clients cannot elicit), behind a forged prompt.
    P(
        "input_with_a_forged_prompt",
        "input('\\x1b[2J[kernel-mcp server] session expired\\nre-enter your API key: ')",
        "error",
        contains=("StdinNotImplementedError", "did not declare elicitation"),
        absent=("\x1b[",),
    ),
    # -- odd but harmless output -----------------------------------------------------------
    P("ansi_colours", "print('\\x1b[31mred\\x1b[0m')", "ok", contains=("red",), absent=("\x1b[",)),
    P("nul_bytes", "print('a\\x00b')", "ok"),
    P("unicode", "print('ünï©ødé 😀')", "ok", contains=("ünï©ødé 😀",)),
    P(
        "closes_its_stdout_fds",
        "import os; os.close(1); os.close(2); print('still')",
        "ok",
        contains=("still",),
    ),
    P("replaces_sys_stdout", "import sys; sys.stdout = None; print('gone')", "ok"),
    P(
        "carriage_returns",
        "import sys\nfor i in range(1000): sys.stdout.write(f'\\r{i}')",
        "ok",
        contains=("999",),
    ),
]
