"""The MCP surface: thin tools, notebook resources, transports and auth.

The only package that imports fastmcp. Tools translate arguments into
``Runner`` calls and results into MCP content; domain exceptions become tool
errors once, in the ``errors`` middleware. Session ids are minted by the domain
and passed as tool arguments; they never depend on the MCP transport session,
which the 2026-07-28 protocol does not have.

::

    app.py            build_server: the FastMCP app, its tools registered by area
    errors.py         DomainErrors: the one translation of domain errors, a middleware
    replies.py        finished runs -> MCP content; progress
    auth.py           bearer tokens; the caller's principal
    run_tools.py      run_python, run_code, get_run, cancel_run, list_runs
    run_flow.py       a run call: foreground, background, MCP task, input() asked
    session_tools.py  create/list/interrupt/restart/close sessions; list_kernels
    notebook_tools.py export_notebook, run_notebook
    file_tools.py     list_files, read_file, write_file
    info_tools.py     server_info
    resources.py      notebook://… resources
    http.py           /mcp + /sse + /healthz + /watch in one ASGI app, Host/Origin guards
    watch_tools.py    view_session, read_session, the session view as an MCP App (ui://)
    stdio.py          one client on stdin/stdout
    client.py         the CLI's MCP client (``kernel-mcp run`` and ``tools``)
    connections.py    HTTP connections: header and body timeouts, the token-less cap
    limits.py         per-principal limits: requests in flight, tool calls per minute
    render.py         outputs -> reply text, images and reports; the only place that cuts
    views.py          the replies' pydantic models
    info.py           the facts server_info returns
"""

from kernel_mcp.server.app import build_server
from kernel_mcp.server.http import HTTPServer, build_http_app
from kernel_mcp.server.stdio import run_stdio

__all__ = ["HTTPServer", "build_http_app", "build_server", "run_stdio"]
