"""run_python / run_code / list_files over every real transport and protocol era.

Each test runs once per transport (``mcp``, ``mcp-legacy``, ``sse``, ``stdio``)
against a ``kernel-mcp serve`` subprocess with real kernels.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from tests.helpers import SECRET, call, structured, text_of

pytestmark = pytest.mark.transport

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_tools_are_listed_with_output_schemas(client):
    tools = {tool.name: tool for tool in await client.list_tools()}
    assert {
        "run_python",
        "run_code",
        "list_files",
        "create_session",
        "list_sessions",
        "interrupt_session",
        "restart_session",
        "close_session",
        "export_notebook",
        "run_notebook",
        "get_run",
        "cancel_run",
        "list_runs",
        "list_kernels",
        "write_file",
        "read_file",
        "server_info",
    } <= set(tools)
    schema = tools["run_python"].output_schema
    assert schema is not None
    assert {
        "status",
        "stdout",
        "stderr",
        "result",
        "error",
        "images",
        "truncated",
        "duration_s",
        "execution_count",
    } <= set(schema["properties"])


async def test_tool_annotations_tell_clients_the_truth(client):
    tools = {tool.name: tool for tool in await client.list_tools()}
    session = structured(await call(client, "create_session"))
    await call(client, "close_session", session_id=session["session_id"])
    for name in ("run_python", "run_code", "run_notebook"):
        hints = tools[name].annotations
        # Running code changes things, and reaches the network unless the kernels are
        # sandboxed (whose network is off by default).
        assert hints.destructive_hint is True and hints.read_only_hint is False, name
        assert hints.open_world_hint is not session["sandboxed"], name
        assert hints.idempotent_hint is False, name
        assert tools[name].output_schema is not None, name
    for name in (
        "list_files",
        "list_sessions",
        "list_kernels",
        "list_runs",
        "get_run",
        "read_file",
        "server_info",
    ):
        hints = tools[name].annotations
        assert hints.read_only_hint is True and hints.idempotent_hint is True, name
    assert tools["write_file"].annotations.destructive_hint is True
    assert tools["write_file"].annotations.idempotent_hint is True
    assert tools["close_session"].annotations.destructive_hint is True
    assert "cells_total" in tools["run_notebook"].output_schema["properties"]


async def test_hello_world(client):
    result = await call(client, "run_python", file_name="hello_world.py")
    report = structured(result)
    assert not result.is_error
    assert report["status"] == "ok"
    assert report["stdout"] == "Hello, World!\n"
    assert report["error"] is None
    assert report["execution_count"] == 1
    assert "Hello, World!" in text_of(result)


async def test_calculator(client):
    report = structured(await call(client, "run_python", file_name="calculator.py"))
    assert report["status"] == "ok"
    assert "2 + 3 = 5" in report["stdout"]
    assert "10 / 4 = 2.5" in report["stdout"]
    assert "mean of 1..10 = 5.5" in report["stdout"]


async def test_file_runs_like_python_file_py(client):
    report = structured(await call(client, "run_python", file_name="main_check.py"))
    name, file, argv, *_ = report["stdout"].split(" ", 3)
    assert (name, file, argv) == ("__main__", "main_check.py", "['main_check.py']")
    assert report["stdout"].rstrip().endswith("projects")


async def test_error_file_gives_a_clean_traceback(client):
    result = await call(client, "run_python", file_name="error_test.py")
    report = structured(result)
    assert result.is_error
    assert report["status"] == "error"
    assert report["stdout"] == "about to divide by zero\n"
    error = report["error"]
    assert error["ename"] == "ZeroDivisionError"
    assert "division by zero" in error["evalue"]
    assert "risky" in error["traceback"]
    assert "\x1b[" not in error["traceback"] and "\x1b[" not in text_of(result)


async def test_figure_arrives_as_png_image_content(client):
    result = await call(client, "run_python", file_name="plot_demo.py")
    report = structured(result)
    assert report["status"] == "ok", report
    images = [block for block in result.content if block.type == "image"]
    assert report["images"] == len(images) == 1
    assert images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(PNG_MAGIC)
    assert "text/html" in report["mime_types"]
    assert result.content[0].type == "text"


async def test_run_code_result_and_fresh_kernel(client):
    first = structured(await call(client, "run_code", code="leftover = 1\n6 * 7"))
    assert first["result"] == "42"
    second = structured(await call(client, "run_code", code="'leftover' in dir()"))
    assert second["result"] == "False"  # fresh by default: nothing carries over


async def test_infinite_loop_times_out_and_next_call_works(client):
    start = time.monotonic()
    result = await call(client, "run_python", file_name="loop.py", timeout=1.5)
    report = structured(result)
    assert result.is_error
    assert report["status"] == "timeout"
    assert report["stdout"] == "looping\n"  # output before the timeout is kept
    assert "Timed out after 1.5 s" in text_of(result)
    assert time.monotonic() - start < 15
    assert (
        structured(await call(client, "run_python", file_name="hello_world.py"))["status"] == "ok"
    )


async def test_sigint_ignoring_loop_is_killed_and_replaced(client):
    result = await call(client, "run_python", file_name="stubborn.py", timeout=1)
    report = structured(result)
    assert report["status"] == "timeout"
    assert any("ignored the interrupt" in note for note in report["notes"])
    assert structured(await call(client, "run_code", code="1 + 1"))["result"] == "2"


async def test_kernel_death_is_detected_within_two_seconds(client):
    result = await call(client, "run_python", file_name="exit3.py", timeout=30)
    report = structured(result)
    assert result.is_error
    assert report["status"] == "kernel_died"
    assert report["duration_s"] < 2.0
    assert "exit code 3" in text_of(result)
    assert (
        structured(await call(client, "run_python", file_name="hello_world.py"))["status"] == "ok"
    )


async def test_ten_megabyte_print_is_truncated_and_server_stays_responsive(client):
    flood = asyncio.ensure_future(call(client, "run_python", file_name="flood.py", timeout=60))
    # While the flood runs, other requests are still answered.
    listed = await asyncio.wait_for(call(client, "list_files", pattern="*.py"), timeout=30)
    assert "hello_world.py" in structured(listed)["files"]
    result = await flood
    report = structured(result)
    assert report["status"] == "ok"
    assert report["truncated"] is True
    assert len(report["stdout"]) < 70_000
    assert report["stdout"].rstrip().endswith("end of flood")
    assert "characters cut" in report["stdout"]
    assert (
        structured(await call(client, "run_code", code="'still here'"))["result"] == "'still here'"
    )


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("../outside/secret.py", "path_traversal"),
        ("sub/../../outside/secret.py", "path_traversal"),
        ("/etc/passwd.py", "outside_projects_dir"),
        ("escape.py", "symlink_escape"),
        ("sub", "file_type"),
        ("hello\x00.py", "nul_byte"),
    ],
)
async def test_escapes_are_refused_and_reveal_nothing(client, name, rule):
    result = await call(client, "run_python", file_name=name)
    assert result.is_error
    message = text_of(result)
    assert f"rule: {rule}" in message
    assert SECRET not in message


async def test_missing_file_is_not_found(client):
    result = await call(client, "run_python", file_name="no_such_file.py")
    assert result.is_error
    assert "No file 'no_such_file.py'" in text_of(result)


async def test_kernel_cannot_see_secrets(client):
    report = structured(await call(client, "run_python", file_name="env_probe.py"))
    assert report["stdout"].splitlines() == ["None", "None", "'visible'"]
    assert SECRET not in report["stdout"]


async def test_list_files(client):
    report = structured(await call(client, "list_files"))
    assert "hello_world.py" in report["files"]
    assert "sub/nested.py" in report["files"]
    assert "escape.py" not in report["files"]  # its target is outside the folder
    refused = await call(client, "list_files", pattern="../*")
    assert refused.is_error


async def test_bad_timeout_is_a_tool_error(client):
    result = await call(client, "run_code", code="1", timeout=-1)
    assert result.is_error
    assert "timeout" in text_of(result)


async def test_a_flood_over_the_cap_is_dropped_in_the_kernel(client):
    # 200 MB of prints: the kernel forwards at most KERNEL_MCP_MAX_OUTPUT_BYTES of it.
    code = "import sys\nchunk = 'y' * 1_000_000\nfor _ in range(200): sys.stdout.write(chunk)"
    result = await call(client, "run_code", code=code, timeout=60)
    report = structured(result)
    assert report["status"] == "ok"
    assert report["truncated"] is True
    assert "The kernel dropped stream output over KERNEL_MCP_MAX_OUTPUT_BYTES." in report["notes"]
    assert report["stdout"].rstrip().endswith("the rest was dropped]")


@pytest.mark.timeout(120)
async def test_list_files_on_a_deep_tree_answers_whatever_the_pattern(client):
    # Any caller can build such a tree with run_code; a glob with many ** must not hang.
    made = await call(
        client,
        "run_code",
        code=(
            "import os\n"
            "p = 'deep-" + client.kind + "'\n"
            "for i in range(40):\n"
            "    p = os.path.join(p, f'd{i}')\n"
            "os.makedirs(p, exist_ok=True)\n"
            "open(os.path.join(p, 'bottom.py'), 'w').close()\n"
        ),
    )
    assert structured(made)["status"] == "ok"
    result = await call(client, "list_files", pattern="**/**/**/**/**/**/bottom.py")
    listing = structured(result)
    assert [f for f in listing["files"] if f.startswith(f"deep-{client.kind}/")] == [
        f"deep-{client.kind}/" + "/".join(f"d{i}" for i in range(40)) + "/bottom.py"
    ]
