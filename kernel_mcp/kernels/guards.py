"""The in-kernel guards: code kernel-mcp installs in every Python kernel before first use.

The source is sent to the kernel (``kernels.setup``); nothing here runs in the server.
"""

# Installed in every Python kernel before first use, called with one dict of
# settings (see Kernel.prepare); the source itself is constant. ipykernel batches
# writes into stream messages of any size, and a loop of display() calls sends
# one message each: a flood would reach the server as more JSON than it could
# parse in time. Dropping what is over the caps in the kernel means the server
# never receives much more than it would keep.
# * Streams: at most stream_limit characters per stream and run, then a notice.
#   The class method is patched because IPython swaps instance attributes per
#   cell, and IPython's history tee is switched off: it keeps every byte a cell
#   prints in kernel memory.
# * Rich outputs (display_data, execute_result, update_display_data): at most
#   max_rich per run, each at most max_bytes. Over the count, displays are
#   dropped with one notice (updated with the final count when the cell ends);
#   an update over the count is held back and only the latest one per display
#   is sent when the cell ends, so a display shows its final state. An output
#   over the size is replaced by a notice. Notices carry the run's totals in
#   their metadata (outputs.GUARD_METADATA_KEY). The publisher classes are
#   patched, not their per-thread hooks, so displays from threads are capped too.
# * mute_fd_echo: ipykernel echoes fd-level writes (subprocesses, C code) to the
#   kernel's original stderr as well as to the notebook; past start-up that copy
#   is only a duplicate, and it would grow the kernel's private stderr file.
_OUTPUT_GUARD = r"""
def _kmcp_guard(config):
    import contextlib, json, os, sys, uuid
    from IPython import get_ipython

    shell = get_ipython()
    marker = config["marker"]
    stream_limit = config["stream_limit"]
    import warnings

    # IPython's hint on sys.exit() names its own file: noise with a server path.
    warnings.filterwarnings("ignore", message="To exit: use 'exit'", category=UserWarning)
    if hasattr(shell, "_tee"):
        shell._tee = lambda channel: contextlib.nullcontext()
    stream_class = type(sys.stdout)
    original_write = stream_class.write
    left = {}

    def write(self, text):
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

    if config["mute_fd_echo"]:
        with contextlib.suppress(Exception):
            echo = getattr(sys.stderr, "_original_stdstream_copy", None)
            if isinstance(echo, int):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, echo, inheritable=False)
                os.close(null)

    max_rich = config["max_rich"]
    max_bytes = config["max_bytes"]
    key = config["metadata_key"]
    run = {}

    def reset(*args, **kwargs):
        run.update(count=0, dropped=0, chars=0, notice=None, shown=set(), held={})

    def size_of(data):
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

    def totals():
        return {key: {"dropped_outputs": run["dropped"], "dropped_chars": run["chars"]}}

    def fit(data, metadata):
        size = size_of(data)
        if size <= max_bytes:
            return data, metadata
        run["chars"] += size
        mimes = ", ".join(sorted(map(str, data)))
        text = (
            f"{marker} an output of {size} characters ({mimes}) over the per-output "
            f"limit of {max_bytes} was dropped]"
        )
        return {"text/plain": text}, totals()

    def install():
        reset()
        display_pub = shell.display_pub
        pub_class = type(display_pub)
        original_publish = pub_class.publish
        hook_class = type(shell.displayhook)
        original_format = hook_class.write_format_data

        def own(text, display_id, update=False):
            original_publish(
                display_pub,
                {"text/plain": text},
                totals(),
                transient={"display_id": display_id},
                update=update,
            )

        def drop(data):
            run["dropped"] += 1
            run["chars"] += size_of(data)
            if run["notice"] is None:
                run["notice"] = "kernel-mcp-guard-" + uuid.uuid4().hex
                own(
                    f"{marker} over {max_rich} rich outputs in one run; the rest are dropped]",
                    run["notice"],
                )

        def publish(self, data, metadata=None, *args, **kwargs):
            transient = kwargs.get("transient")
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            update = bool(kwargs.get("update"))
            if run["count"] >= max_rich:
                if not update:
                    drop(data)
                elif display_id in run["shown"]:
                    run["held"][display_id] = (self, data, metadata)
                return None
            run["count"] += 1
            if display_id and not update:
                run["shown"].add(display_id)
            data, metadata = fit(data, metadata)
            return original_publish(self, data, metadata, *args, **kwargs)

        def write_format_data(self, format_dict, md_dict=None):
            if run["count"] >= max_rich:
                drop(format_dict)
                return None  # the execute_result keeps no data, so it is not sent
            run["count"] += 1
            return original_format(self, *fit(format_dict, md_dict))

        def finish(*args, **kwargs):
            held, run["held"] = run["held"], {}
            for display_id, (publisher, data, metadata) in held.items():
                data, metadata = fit(data, metadata)
                original_publish(
                    publisher, data, metadata, transient={"display_id": display_id}, update=True
                )
            if run["notice"] is not None:
                own(
                    f"{marker} {run['dropped']} rich outputs over {max_rich} in one run "
                    "were dropped]",
                    run["notice"],
                    update=True,
                )

        pub_class.publish = publish
        hook_class.write_format_data = write_format_data
        shell.events.register("pre_execute", reset)
        shell.events.register("post_run_cell", finish)

    with contextlib.suppress(Exception):  # a kernel without IPython's publishers
        install()
"""
# Installed with the output guard: when a run cannot ask anyone for input, say so in
# words the model can act on, instead of ipykernel's "this frontend does not support
# input requests". The class methods are patched: ipykernel rebinds builtins.input
# to the kernel's bound method on every execution.
_INPUT_GUARD = r"""
def _kmcp_input_guard(config):
    from IPython import get_ipython
    from IPython.core.error import StdinNotImplementedError

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return
    cls = type(kernel)
    for name in ("raw_input", "getpass"):
        original = getattr(cls, name, None)
        if original is None or getattr(original, "_kmcp", False):
            continue

        def guarded(self, *args, _original=original, **kwargs):
            if not getattr(self, "_allow_stdin", True):
                # Why this run cannot ask: set per run by the server (_kmcp_no_stdin).
                raise StdinNotImplementedError(
                    getattr(self, "_kmcp_no_stdin", None) or config["message"]
                )
            return _original(self, *args, **kwargs)

        guarded._kmcp = True
        setattr(cls, name, guarded)
"""
# The whole set-up in one piece, for a kernel that runs it itself before it answers
# anything (a forked kernel, kernel_mcp.launch.template): no cell, so none of
# IPython's per-cell machinery (the tee whose leftovers prepare() drops), and
# compiled once in the template. The preload is imported into the user's
# namespace, as prepare()'s cell does.
_SETUP_CALLS = r"""
def _kmcp_setup(config, user_ns):
    _kmcp_guard(config["output"])
    _kmcp_input_guard(config["input"])
    failed = {}
    for name in config["preload"]:
        try:
            exec(f"import {name}", user_ns)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed
"""
