"""The in-kernel guards: what kernel-mcp installs in every Python kernel before first use.

This module runs in the *kernel*, not in the server: its source is sent as it is
(``kernels.setup.KERNEL_SETUP``), executed in a namespace of its own (nothing
lands in the user's), and called with its settings as literal data. A spawned
kernel runs it as one silent cell (``Kernel.prepare``); a forked kernel runs it
itself before it answers anything (``launch.template`` compiles it once). So it
imports nothing from kernel_mcp, only the standard library and IPython, which
every ipykernel has; the kernel's interpreter may be another environment's.

The output guard. ipykernel batches writes into stream messages of any size, and
a loop of ``display()`` calls sends one message each: a flood would reach the
server as more JSON than it could parse in time. Dropping what is over the caps
in the kernel means the server never receives much more than it would keep.

* Streams: at most ``stream_limit`` characters per stream and run, then a notice.
  The class method is patched because IPython swaps instance attributes per cell,
  and IPython's history tee is switched off: it keeps every byte a cell prints
  in kernel memory.
* Rich outputs (display_data, execute_result, update_display_data): at most
  ``max_rich`` per run, each at most ``max_bytes``. Over the count, displays are
  dropped with one notice (updated with the final count when the cell ends); an
  update over the count is held back and only the latest one per display is sent
  when the cell ends, so a display shows its final state. An output over the
  size is replaced by a notice. Notices carry the run's totals in their metadata
  (``metadata_key``). The publisher classes are patched, not their per-thread
  hooks, so displays from threads are capped too.
* ``mute_fd_echo``: ipykernel echoes fd-level writes (subprocesses, C code) to
  the kernel's original stderr as well as to the notebook; past start-up that
  copy is only a duplicate, and it would grow the kernel's private stderr file.

The input guard. When a run cannot ask anyone for input, ``input()`` says so in
words the model can act on, instead of ipykernel's "this frontend does not
support input requests". The class methods are patched: ipykernel rebinds
``builtins.input`` to the kernel's bound method on every execution.

The pip guard. In a kernel whose only network interface is loopback (the
sandbox's, network off), ``%pip install`` and ``!pip install`` would retry
against a network that is not there for seconds, then fail while the cell still
says ``ok``. There ``%pip install`` in a session's kernel asks the server, which
installs wheels into the session's folder: the request is an input request on
the stdin channel whose prompt starts with :data:`SERVER_REQUEST` (the shell
channel is busy with the cell; the kernel has no other way out), answered by the
server, never shown to a person. Elsewhere (a run without a session) ``%pip``,
and ``!pip install`` everywhere, fail at once, and the cell with them, saying
what to do instead (:data:`PIP_MESSAGE`, :data:`PIP_NO_SESSION`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from IPython import get_ipython
from IPython.core.error import StdinNotImplementedError, UsageError

#: What ``%pip`` and ``!pip install`` say in a kernel without a network.
PIP_MESSAGE = (
    "pip cannot reach a package index from this kernel: kernel-mcp's sandbox gives it no "
    "network. Ask the server instead: in a session, `%pip install NAME ...` or the "
    "install_packages tool (session_id, packages=[...]) installs wheels into the session, "
    "and they import at once without a restart. A run without a session_id has no "
    "packages: call create_session first."
)
#: Starts a request to the server over the stdin channel (``kernels.setup.SERVER_REQUEST``).
SERVER_REQUEST = "\x1dkernel-mcp:request\x1d"
#: What ``%pip`` says in a kernel the server does not answer (a run without a session).
PIP_NO_SESSION = (
    "%pip install needs a session: this run has none, so there is no folder to install "
    "into. Call create_session, then run %pip install (or the install_packages tool) with "
    "its session_id."
)
#: A shell command that is pip installing something (``!pip install``, ``!python -m pip``).
PIP_COMMAND = re.compile(r"^\s*(\S*/)?(pip3?(\.\d+)?|python3?(\.\d+)?\s+-m\s+pip)\s+install\b")


def _kmcp_setup(config: dict[str, Any], user_ns: dict[str, Any]) -> dict[str, str]:
    """The whole set-up in one piece, for a kernel that runs it itself before it answers
    anything (a forked kernel): no cell, so none of IPython's per-cell machinery (the
    tee whose leftovers a spawned kernel's cell has to drop). The preload is imported
    into the user's namespace, as a cell would. Returns the preload modules that
    failed, with why."""
    _kmcp_guard(config["output"])
    _kmcp_input_guard(config["input"])
    failed = {}
    for name in config["preload"]:
        try:
            exec(f"import {name}", user_ns)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


def _kmcp_guard(config: dict[str, Any]) -> None:
    """Install the output guard (see the module docstring) with these caps."""
    shell = get_ipython()
    # IPython's hint on sys.exit() names its own file: noise with a server path.
    warnings.filterwarnings("ignore", message="To exit: use 'exit'", category=UserWarning)
    if hasattr(shell, "_tee"):
        shell._tee = lambda channel: contextlib.nullcontext()
    _guard_streams(shell, config["marker"], config["stream_limit"])
    if config["mute_fd_echo"]:
        _mute_fd_echo()
    with contextlib.suppress(Exception):  # a kernel without IPython's publishers
        _RichOutputs(shell, config).install()


def _guard_streams(shell: Any, marker: str, stream_limit: int) -> None:
    """At most ``stream_limit`` characters per stream and run, then one notice."""
    stream_class = type(sys.stdout)
    original_write = stream_class.write
    left: dict[str, int] = {}

    def write(self: Any, text: Any) -> Any:
        if not isinstance(text, str):
            return original_write(self, text)
        name = getattr(self, "name", "stream")
        room = left.get(name, stream_limit)
        if room <= 0:
            return len(text)
        if len(text) > room:
            left[name] = 0
            original_write(self, text[:room])
            original_write(
                self,
                f"\n{marker} {name} over {stream_limit} characters in one run; "
                "the rest was dropped]\n",
            )
            return len(text)
        left[name] = room - len(text)
        return original_write(self, text)

    stream_class.write = write
    shell.events.register("pre_execute", lambda *args, **kwargs: left.clear())


def _mute_fd_echo() -> None:
    with contextlib.suppress(Exception):
        echo = getattr(sys.stderr, "_original_stdstream_copy", None)
        if isinstance(echo, int):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, echo, inheritable=False)
            os.close(null)


def _size_of(data: Any) -> int:
    """The size of a display's data as it would travel, in characters."""
    total = 0
    if not isinstance(data, dict):
        return total
    for value in data.values():
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, (bytes, bytearray)):
            total += (len(value) + 2) // 3 * 4
        else:
            with contextlib.suppress(Exception):
                total += len(json.dumps(value, default=str))
    return total


class _RichOutputs:
    """The rich-output caps of one kernel: its counts for the run under way."""

    def __init__(self, shell: Any, config: dict[str, Any]) -> None:
        self.shell = shell
        self.marker = config["marker"]
        self.max_rich = config["max_rich"]
        self.max_bytes = config["max_bytes"]
        self.key = config["metadata_key"]
        self.original_publish: Callable[..., Any] = lambda *args, **kwargs: None
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.count = 0
        self.dropped = 0
        self.chars = 0
        self.notice: str | None = None
        self.shown: set[str] = set()
        self.held: dict[str, tuple[Any, Any, Any]] = {}

    def install(self) -> None:
        display_pub = self.shell.display_pub
        pub_class = type(display_pub)
        hook_class = type(self.shell.displayhook)
        self.display_pub = display_pub
        self.original_publish = original_publish = pub_class.publish
        original_format = hook_class.write_format_data
        guard = self

        def publish(self: Any, data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> Any:
            if not guard.admit(self, data, metadata, kwargs):
                return None
            data, metadata = guard.fit(data, metadata)
            return original_publish(self, data, metadata, *args, **kwargs)

        def write_format_data(self: Any, format_dict: Any, md_dict: Any = None) -> Any:
            if guard.count >= guard.max_rich:
                guard.drop(format_dict)
                return None  # the execute_result keeps no data, so it is not sent
            guard.count += 1
            return original_format(self, *guard.fit(format_dict, md_dict))

        pub_class.publish = publish
        hook_class.write_format_data = write_format_data
        self.shell.events.register("pre_execute", self.reset)
        self.shell.events.register("post_run_cell", self.finish)

    def admit(self, publisher: Any, data: Any, metadata: Any, kwargs: dict[str, Any]) -> bool:
        """Whether a display goes out now; over the count it is dropped, or held back
        (an update of a display shown this run: its latest goes out at the end)."""
        transient = kwargs.get("transient")
        display_id = transient.get("display_id") if isinstance(transient, dict) else None
        update = bool(kwargs.get("update"))
        if self.count >= self.max_rich:
            if not update:
                self.drop(data)
            elif display_id in self.shown:
                self.held[display_id] = (publisher, data, metadata)
            return False
        self.count += 1
        if display_id and not update:
            self.shown.add(display_id)
        return True

    def totals(self) -> dict[str, Any]:
        return {self.key: {"dropped_outputs": self.dropped, "dropped_chars": self.chars}}

    def fit(self, data: Any, metadata: Any) -> tuple[Any, Any]:
        """The output as sent: as it is, or a notice when it is over ``max_bytes``."""
        size = _size_of(data)
        if size <= self.max_bytes:
            return data, metadata
        self.chars += size
        mimes = ", ".join(sorted(map(str, data)))
        text = (
            f"{self.marker} an output of {size} characters ({mimes}) over the per-output "
            f"limit of {self.max_bytes} was dropped]"
        )
        return {"text/plain": text}, self.totals()

    def own(self, text: str, display_id: str, update: bool = False) -> None:
        """Publish the guard's own notice (a display of its own, updated in place)."""
        self.original_publish(
            self.display_pub,
            {"text/plain": text},
            self.totals(),
            transient={"display_id": display_id},
            update=update,
        )

    def drop(self, data: Any) -> None:
        self.dropped += 1
        self.chars += _size_of(data)
        if self.notice is None:
            self.notice = "kernel-mcp-guard-" + uuid.uuid4().hex
            self.own(
                f"{self.marker} over {self.max_rich} rich outputs in one run; "
                "the rest are dropped]",
                self.notice,
            )

    def finish(self, *args: Any, **kwargs: Any) -> None:
        """The cell ended: send the latest of each held update, and the final count."""
        held, self.held = self.held, {}
        for display_id, (publisher, data, metadata) in held.items():
            data, metadata = self.fit(data, metadata)
            self.original_publish(
                publisher, data, metadata, transient={"display_id": display_id}, update=True
            )
        if self.notice is not None:
            self.own(
                f"{self.marker} {self.dropped} rich outputs over {self.max_rich} in one run "
                "were dropped]",
                self.notice,
                update=True,
            )


def _kmcp_input_guard(config: dict[str, Any]) -> None:
    """Make ``input()`` and ``getpass()`` say ``config["message"]`` (or the message the
    server set for this run, ``_kmcp_no_stdin``) when the run cannot ask anyone."""
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return
    cls = type(kernel)
    for name in ("raw_input", "getpass"):
        original = getattr(cls, name, None)
        if original is None or getattr(original, "_kmcp", False):
            continue

        def guarded(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not getattr(self, "_allow_stdin", True):
                # Why this run cannot ask: set per run by the server (_kmcp_no_stdin).
                raise StdinNotImplementedError(
                    getattr(self, "_kmcp_no_stdin", None) or config["message"]
                )
            return _original(self, *args, **kwargs)

        guarded._kmcp = True  # type: ignore[attr-defined]
        setattr(cls, name, guarded)
    _kmcp_pip_guard()


def _offline() -> bool:
    """Whether this kernel's only network interface is loopback (the sandbox's)."""
    try:
        return {name for _, name in socket.if_nameindex()} <= {"lo"}
    except OSError:
        return False


def _pip_by_the_server(shell: Any, line: str) -> None:
    """``%pip install …`` in a session's kernel: the server installs (the kernel has no
    network), answering over the stdin channel; then the session's folder goes in front
    of ``sys.path``. Prints what was installed; a failure raises in the cell."""
    kernel = shell.kernel
    if not getattr(kernel, "_kmcp_packages", False):
        raise UsageError(PIP_NO_SESSION)
    modules = sorted({name.partition(".")[0] for name in sys.modules})
    request = SERVER_REQUEST + json.dumps({"op": "pip", "line": line, "modules": modules})
    try:  # ipykernel 7; 6 keeps the shell's identity in a dict
        ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
    except AttributeError:
        ident = kernel._parent_ident["shell"]
    answer = json.loads(kernel._input_request(request, ident, kernel.get_parent("shell")))
    if answer.get("error"):
        raise UsageError(answer["error"])
    if answer.get("path"):
        import importlib
        import site

        path = answer["path"]
        if path in sys.path:
            sys.path.remove(path)
        site.addsitedir(path)
        sys.path.remove(path)
        sys.path.insert(0, path)
        importlib.invalidate_caches()
    print(answer.get("text", ""), end="")


def _kmcp_pip_guard() -> None:
    """Offline, make ``%pip`` and ``!pip install`` fail at once with :data:`PIP_MESSAGE`."""
    shell = get_ipython()
    if shell is None or not _offline():
        return

    def pip(line: str = "") -> None:
        _pip_by_the_server(shell, line)

    shell.register_magic_function(pip, "line", "pip")
    system = shell.system

    def guarded_system(cmd: str, *args: Any, **kwargs: Any) -> Any:
        if PIP_COMMAND.match(str(cmd)):
            raise UsageError(PIP_MESSAGE)
        return system(cmd, *args, **kwargs)

    shell.system = guarded_system
