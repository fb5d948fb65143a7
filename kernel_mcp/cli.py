"""``kernel-mcp``: serve, run a file or notebook, list tools, configure a client.

A thin layer over the Python API.

Every ``serve`` flag is also an environment variable (see ``.env.example``);
flags win over the environment. ``main(argv) -> int`` is what tests call.

Exit codes: 0 done; 1 ``run`` finished with a status other than ok; 2 a bad
setting; 3 the server could not serve (its port is in use, start-up failed);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_mcp import __version__, clients, folders
from kernel_mcp.config import Settings, load_settings, setting_name
from kernel_mcp.errors import CannotServe, ConfigError

if TYPE_CHECKING:  # the backend is the deployment's; only its banner phrase is read
    from kernel_mcp.backends.base import KernelBackend

__all__ = ["main", "main_entry"]

EXIT_OK, EXIT_FAILED_RUN, EXIT_BAD_SETTING, EXIT_CANNOT_SERVE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernel-mcp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kernel-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve MCP over HTTP (/mcp and /sse) or stdio")
    serve.add_argument("--host", help="bind address (KERNEL_MCP_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (KERNEL_MCP_PORT, default 8000)")
    serve.add_argument("--stdio", action="store_true", help="serve one client on stdin/stdout")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback bind without KERNEL_MCP_TOKEN",
    )
    _add_common(serve)
    serve.add_argument("--pool-size", type=int, help="warm kernels (KERNEL_MCP_POOL_SIZE)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])

    run = sub.add_parser("run", help="run a .py file or .ipynb notebook and print its outputs")
    run.add_argument("file", help="path inside the projects folder (or relative to it)")
    run.add_argument(
        "--server", help="URL of a running server (…/mcp or …/sse); default: an in-process server"
    )
    run.add_argument("--timeout", type=float, help="seconds (PYTHON_TIMEOUT)")
    run.add_argument(
        "--images-dir",
        type=Path,
        default=Path("kernel-mcp-images"),
        help="where figures are saved (default ./kernel-mcp-images)",
    )
    run.add_argument(
        "--parameter",
        "-p",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="notebook parameter, e.g. -p n=3 (notebooks only)",
    )
    _add_common(run, timeout=False)

    tools = sub.add_parser("tools", help="list the server's tools")
    tools.add_argument("--server", help="URL of a running server; default: in-process")
    _add_common(tools, timeout=False)

    config = sub.add_parser(
        "config",
        help="print (or --write) the configuration that starts this server from a client",
    )
    config.add_argument("client", choices=clients.CLIENTS)
    config.add_argument(
        "--write", action="store_true", help="merge it into the client's configuration file"
    )
    config.add_argument("--config-path", type=Path, help="the client's file (default: its own)")
    config.add_argument("--uvx", action="store_true", help="start it as `uvx kernel-mcp`")
    config.add_argument("--name", default="kernel-mcp", help="the server's name in the client")
    config.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the server, e.g. --env KERNEL_MCP_SANDBOX=on (repeatable)",
    )
    config.add_argument(
        "--wsl",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="claude-desktop from inside WSL: start through wsl.exe and write the Windows "
        "file (default: detected)",
    )
    _add_common(config, timeout=False)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, timeout: bool = True) -> None:
    parser.add_argument("--projects-dir", type=Path, help="PYTHON_PROJECTS_DIR")
    parser.add_argument("--notebooks-dir", type=Path, help="KERNEL_MCP_NOTEBOOKS_DIR")
    if timeout:
        parser.add_argument("--timeout", type=float, help="default seconds (PYTHON_TIMEOUT)")


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """The settings, with the per-user folders made if they are the ones chosen."""
    overrides = {
        "projects_dir": getattr(args, "projects_dir", None),
        "notebooks_dir": getattr(args, "notebooks_dir", None),
        **extra,
    }
    settings = load_settings(**overrides)
    folders.prepare(settings)
    return settings


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "config":
            return _config(args)
        return asyncio.run(_tools(args))
    except ConfigError as exc:
        print(f"kernel-mcp: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    except CannotServe as exc:
        print(f"kernel-mcp: {exc}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main_entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


# -- serve ----------------------------------------------------------------------
def banner(settings: Settings, backend: KernelBackend, *, serving: str) -> str:
    """The start-up banner: what serves where, the folders and why, the sandbox.

    Args:
        backend: where kernels come from (it says how they are isolated).
        serving: the transport, e.g. ``stdio`` or the HTTP URLs.
    """
    where = folders.describe(settings)
    return (
        f"kernel-mcp {__version__}: {serving}\n"
        f"  projects:  {where['projects']}\n"
        f"  notebooks: {where['notebooks']}\n"
        f"  sandbox:   {backend.isolation()}"
    )


def _listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket before anything starts, so a busy port is one clear line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotServe(
            f"cannot bind to {host!r}: {exc.strerror}; set --host or KERNEL_MCP_HOST"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotServe(f"port {port} is in use; set --port or KERNEL_MCP_PORT") from None
        raise CannotServe(
            f"cannot listen on {host}:{port}: {exc.strerror}; set --host/--port "
            "or KERNEL_MCP_HOST/KERNEL_MCP_PORT"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _raise_open_files_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit on open files to its hard limit.

    Each connection and each kernel's sockets hold descriptors; a soft limit of
    1,024 (a common default) is what a flood of connections exhausts first.
    Returns (before, after), or None where the platform has no such limit or
    refuses (the server runs on with what it has).
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # An unlimited hard limit cannot be the soft one (Linux caps it at nr_open).
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft == resource.RLIM_INFINITY or soft >= target:
            return soft, soft
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    except (OSError, ValueError):
        return None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        timeout=args.timeout,
        pool_size=args.pool_size,
    )
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The gateway backend's HTTP client would log every liveness check at INFO.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    from kernel_mcp import server
    from kernel_mcp.deployment import runner_for

    if args.stdio:
        runner = runner_for(settings)
        # stderr: stdout is the protocol. A stdio client shows it as the server's log.
        print(banner(settings, runner.backend, serving="stdio"), file=sys.stderr, flush=True)
        asyncio.run(server.run_stdio(settings, runner))
        return 0
    import uvicorn

    from kernel_mcp.server.connections import http_protocol

    limit = _raise_open_files_limit()
    if limit is not None and limit[0] != limit[1]:
        logging.getLogger("kernel_mcp.server").info(
            "open files limit raised from %d to %d", limit[0], limit[1]
        )
    sock = _listen(settings.host, settings.port)
    port = sock.getsockname()[1]
    runner = runner_for(settings)
    app = server.build_http_app(settings, runner)
    serving = (
        f"http://{settings.host}:{port}/mcp (streamable HTTP) and /sse (SSE); "
        f"auth: {'bearer token' if settings.tokens else 'none'}"
    )
    print(banner(settings, runner.backend, serving=serving), file=sys.stderr, flush=True)
    # HTTPServer: uvicorn's, ending the watchers' event streams as soon as it is told to stop.
    instance = server.HTTPServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=port,
            lifespan="on",
            log_level=args.log_level,
            # uvicorn's h11 protocol with header and body timeouts and a cap on
            # connections without a valid token (kernel_mcp/server/connections.py).
            http=http_protocol(settings),
            # A line per request costs CPU on the hot path; --log-level debug has them.
            access_log=args.log_level == "debug",
            timeout_graceful_shutdown=5,
        ),
        app,
    )
    try:
        instance.run(sockets=[sock])
    finally:
        sock.close()
    if not instance.started:
        raise CannotServe("the server did not start; the log above says why")
    return EXIT_OK


# -- client side -------------------------------------------------------------------
async def _with_client(args: argparse.Namespace, use: Any) -> int:
    from kernel_mcp.server.client import connected

    token = os.environ.get("KERNEL_MCP_TOKEN", "").split(",")[0].strip() or None
    settings = None if args.server else _settings(args, pool_size=0)
    async with connected(args.server, token=token, settings=settings) as client:
        return int(await use(client))


async def _tools(args: argparse.Namespace) -> int:
    async def use(client: Any) -> int:
        for tool in await client.list_tools():
            summary = (tool.description or "").strip().splitlines()[0]
            print(f"{tool.name}: {summary}")
        return 0

    return await _with_client(args, use)


async def _run(args: argparse.Namespace) -> int:
    target = args.file
    if not args.server and Path(target).exists():
        target = str(Path(target).resolve())
    notebook = target.lower().endswith(".ipynb")
    parameters: dict[str, Any] = {}
    for item in args.parameter:
        name, _, raw = item.partition("=")
        try:
            parameters[name] = json.loads(raw)
        except json.JSONDecodeError:
            parameters[name] = raw

    async def use(client: Any) -> int:
        if notebook:
            arguments: dict[str, Any] = {"notebook_path": target}
            if parameters:
                arguments["parameters"] = parameters
        else:
            arguments = {"file_name": target}
        if args.timeout is not None:
            arguments["timeout"] = args.timeout
        result = await client.call_tool_mcp("run_notebook" if notebook else "run_python", arguments)
        saved = 0
        for block in result.content:
            if block.type == "text":
                print(block.text)
            elif block.type == "image":
                args.images_dir.mkdir(parents=True, exist_ok=True)
                saved += 1
                stem = Path(target).stem
                path = args.images_dir / f"{stem}-{saved}.{EXTENSIONS.get(block.mime_type, 'bin')}"
                path.write_bytes(base64.b64decode(block.data))
                print(f"[image saved: {path}]")
        return 1 if result.is_error else 0

    return await _with_client(args, use)


# -- config ----------------------------------------------------------------------------
def _passed_settings(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs of --env, each a setting's documented name."""
    known = {setting_name(field): field for field in Settings.model_fields}
    passed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().upper()
        if not sep or name not in known:
            raise ConfigError(
                f"--env {pair}: not NAME=VALUE with a setting's name "
                "(KERNEL_MCP_*, PYTHON_PROJECTS_DIR, PYTHON_TIMEOUT, PYTHON_MAX_TIMEOUT)"
            )
        passed[name] = value
    return passed


def _config(args: argparse.Namespace) -> int:
    """Print the client's snippet; with --write, merge it into the client's file."""
    passed = _passed_settings(args.env)
    fields = {setting_name(field): field for field in Settings.model_fields}
    # The folders as this server would use them, absolute, so that the client's start
    # (any working directory) finds the same ones; the values passed are validated too.
    overrides = {fields[name]: value for name, value in passed.items()}
    settings = _settings(args, **overrides)
    env = {
        "PYTHON_PROJECTS_DIR": str(settings.projects_dir),
        "KERNEL_MCP_NOTEBOOKS_DIR": str(settings.notebooks_dir),
        **{k: v for k, v in passed.items() if fields[k] not in ("projects_dir", "notebooks_dir")},
    }
    wsl = args.client == "claude-desktop" and (clients.in_wsl() if args.wsl is None else args.wsl)
    how = clients.launch(
        clients.installed_command(uvx=args.uvx),
        env,
        wsl=wsl,
        distro=os.environ.get("WSL_DISTRO_NAME"),
    )
    print(clients.render(args.client, args.name, how))
    if not args.write:
        return EXIT_OK
    path = args.config_path or clients.default_config_path(args.client, wsl=wsl)
    written = clients.merge_into(
        path.expanduser(), args.client, args.name, clients.entry(args.client, how)
    )
    what = "replaced the entry" if written.replaced else "added the entry"
    kept = f"; the previous file is {written.backup}" if written.backup else ""
    print(
        f"kernel-mcp: {what} {args.name!r} in {written.path}{kept}; restart the client",
        file=sys.stderr,
    )
    return EXIT_OK
