"""Execution -> reply, specified on hand-built executions.

``render`` is the only place that cuts output for a reply: each stream keeps
its beginning and its end, images are counted and size-checked, and the whole
reply (text block + structured JSON + image base64) fits ``max_reply_bytes``.
"""

from __future__ import annotations

import base64
import copy
import struct
import zlib
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat import NotebookNode
from nbformat.v4 import new_output

from kernel_mcp.kernels.execution import Execution, Status
from kernel_mcp.server.render import Image, Reply, ReplyLimits, render
from kernel_mcp.server.views import RunReport

STARTED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@cache
def png(width: int = 1, height: int = 1, noise: int = 0) -> bytes:
    """A real greyscale PNG, stored uncompressed: its size depends only on width and height,
    ``noise`` only changes the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    rows = b"".join(
        b"\x00" + bytes((x * 31 + y * 17 + noise * (x ^ y)) % 256 for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def execution(
    outputs: list[NotebookNode] | None = None,
    status: Status = "ok",
    **kwargs: Any,
) -> Execution:
    kwargs.setdefault("execution_count", 4)
    kwargs.setdefault("error", next((o for o in outputs or [] if o.output_type == "error"), None))
    kwargs.setdefault("duration_s", 1.25)
    kwargs.setdefault("timeout_s", 30.0)
    return Execution(
        status=status,
        outputs=outputs or [],
        started_at=STARTED,
        ended_at=STARTED + timedelta(seconds=kwargs["duration_s"]),
        **kwargs,
    )


def out(text: str) -> NotebookNode:
    return new_output("stream", name="stdout", text=text)


def err(text: str) -> NotebookNode:
    return new_output("stream", name="stderr", text=text)


def result(data: dict[str, Any], count: int = 4) -> NotebookNode:
    return new_output("execute_result", data=data, execution_count=count)


def display(data: dict[str, Any]) -> NotebookNode:
    return new_output("display_data", data=data)


def error(ename: str, evalue: str, traceback: list[str]) -> NotebookNode:
    return new_output("error", ename=ename, evalue=evalue, traceback=traceback)


def reply_bytes(reply: Reply) -> int:
    """What goes on the wire: the text, the structured JSON and the image base64."""
    return (
        len(reply.text.encode("utf-8"))
        + len(reply.report.model_dump_json().encode("utf-8"))
        + sum(len(image.data) for image in reply.images)
    )


# --- fields ------------------------------------------------------------------------


def test_a_plain_run() -> None:
    reply = render(
        execution([out("hello\n"), err("warn\n"), result({"text/plain": "42"})]),
        ReplyLimits(),
        file="pkg/job.py",
        session_id="s-1",
        notebook="notebook://runs/x.ipynb",
        notes=["from the caller"],
    )
    assert reply.report == RunReport(
        status="ok",
        stdout="hello\n",
        stderr="warn\n",
        result="42",
        error=None,
        images=0,
        truncated=False,
        duration_s=1.25,
        execution_count=4,
        mime_types=["text/plain"],
        timeout_s=30.0,
        file="pkg/job.py",
        session_id="s-1",
        notebook="notebook://runs/x.ipynb",
        notes=["from the caller"],
    )
    assert reply.images == []
    assert reply.is_error is False
    assert reply.text == "\n".join(
        [
            "status: ok · pkg/job.py · In [4] · 1.250 s · session s-1",
            "note: from the caller",
            "--- stdout ---",
            "hello",
            "--- stderr ---",
            "warn",
            "--- result ---",
            "42",
        ]
    )


def test_streams_of_one_name_are_joined_in_order() -> None:
    reply = render(execution([out("a\n"), err("x\n"), out("b\n"), err("y\n")]), ReplyLimits())
    assert reply.report.stdout == "a\nb\n"
    assert reply.report.stderr == "x\ny\n"


def test_nothing_to_show() -> None:
    reply = render(execution([], execution_count=None), ReplyLimits())
    assert reply.report.stdout == reply.report.stderr == ""
    assert reply.report.result is None
    assert reply.report.execution_count is None
    assert reply.report.mime_types == []
    assert reply.text == "status: ok · 1.250 s"


def test_error_fields_and_ansi_stripped() -> None:
    traceback = [
        "\x1b[0;31m---------------------------------------------------------------\x1b[0m",
        "\x1b[0;31mZeroDivisionError\x1b[0m  Traceback (most recent call last)",
        "Cell \x1b[0;32mIn[4], line 1\x1b[0m\n"
        "\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1\x1b[39m/\x1b[38;5;241m0\x1b[39m",
        "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
    ]
    reply = render(
        execution(
            [
                out("\x1b[1mbold\x1b[0m\n"),
                error("ZeroDivisionError", "division by zero", traceback),
            ],
            status="error",
        ),
        ReplyLimits(),
    )
    report = reply.report
    assert report.status == "error"
    assert reply.is_error
    assert report.error is not None
    assert report.error.ename == "ZeroDivisionError"
    assert report.error.evalue == "division by zero"
    assert "\x1b" not in report.error.traceback
    assert report.error.traceback.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert "----> 1 1/0" in report.error.traceback
    assert report.stdout == "bold\n"
    assert "\x1b" not in reply.text
    assert reply.text.endswith("--- error ---\n" + report.error.traceback)


def test_ansi_is_stripped_from_streams_and_results() -> None:
    reply = render(
        execution(
            [
                out("\x1b[32mok\x1b[0m\n"),
                err("\x1b[31mbad\x1b[0m\n"),
                result({"text/plain": "\x1b[34mblue\x1b[0m"}),
            ]
        ),
        ReplyLimits(),
    )
    assert (reply.report.stdout, reply.report.stderr, reply.report.result) == (
        "ok\n",
        "bad\n",
        "blue",
    )


@pytest.mark.parametrize(
    ("status", "is_error"),
    [
        ("ok", False),
        ("error", True),
        ("timeout", True),
        ("kernel_died", True),
        ("interrupted", True),
    ],
)
def test_only_ok_is_not_an_error(status: Status, is_error: bool) -> None:
    reply = render(execution([out("x\n")], status=status, death="exit code 1"), ReplyLimits())
    assert reply.is_error is is_error
    assert reply.report.status == status
    assert reply.text.startswith(f"status: {status} ·")


# --- notes for how a run ended -------------------------------------------------------


def test_timeout_note_comes_first() -> None:
    reply = render(
        execution([out("partial\n")], status="timeout", timeout_s=2.5, notes=["from kernel"]),
        ReplyLimits(),
        notes=["from caller"],
    )
    assert reply.report.notes == [
        "Timed out after 2.5 s; output before it is shown.",
        "from caller",
        "from kernel",
    ]
    assert reply.report.stdout == "partial\n"
    assert "note: Timed out after 2.5 s" in reply.text


def test_kernel_died_note_says_how() -> None:
    reply = render(
        execution(status="kernel_died", death="killed by signal 9 (SIGKILL)"), ReplyLimits()
    )
    assert reply.report.notes == ["The kernel died (killed by signal 9 (SIGKILL))."]


def test_interrupted_note() -> None:
    reply = render(execution(status="interrupted"), ReplyLimits())
    assert reply.report.notes == ["Interrupted."]


def test_ok_and_error_have_no_status_note() -> None:
    assert render(execution(status="ok"), ReplyLimits()).report.notes == []
    assert render(execution(status="error"), ReplyLimits()).report.notes == []


def test_kernel_side_drops_are_noted_and_mark_truncated() -> None:
    reply = render(
        execution([out("x\n")], dropped_chars=1234, dropped_outputs=5),
        ReplyLimits(),
        notebook="notebook://n.ipynb",
    )
    assert reply.report.truncated
    assert "Output over the kernel-side cap was not kept: 1234 characters, 5 outputs." in (
        reply.report.notes
    )
    assert "The full output is in the notebook notebook://n.ipynb." in reply.report.notes


# --- stream truncation ------------------------------------------------------------------


def digits(n: int) -> str:
    return "".join(str(i % 10) for i in range(n))


def test_stream_over_the_limit_keeps_beginning_and_end() -> None:
    text = "BEGIN" + digits(990) + "END!!"
    reply = render(execution([out(text)]), ReplyLimits(max_stream_chars=100))
    stdout = reply.report.stdout
    assert stdout == f"{text[:75]}\n[… 900 characters cut …]\n{text[-25:]}"
    assert stdout.startswith("BEGIN")
    assert stdout.endswith("END!!")
    assert reply.report.truncated
    assert "stdout: 900 characters cut from the middle." in reply.report.notes
    assert not any("notebook" in note for note in reply.report.notes)


def test_stream_at_the_limit_is_whole() -> None:
    text = digits(100)
    reply = render(execution([out(text), err(text)]), ReplyLimits(max_stream_chars=100))
    assert reply.report.stdout == reply.report.stderr == text
    assert not reply.report.truncated
    assert reply.report.notes == []


def test_each_stream_is_cut_on_its_own_and_the_notebook_is_named() -> None:
    reply = render(
        execution([out("o" * 50), err("e" * 1000)]),
        ReplyLimits(max_stream_chars=100),
        notebook="notebook://sessions/s-1.ipynb",
    )
    assert reply.report.stdout == "o" * 50
    assert "[… 900 characters cut …]" in reply.report.stderr
    assert reply.report.notes == [
        "stderr: 900 characters cut from the middle.",
        "The full output is in the notebook notebook://sessions/s-1.ipynb.",
    ]


def test_long_results_and_tracebacks_are_cut_too() -> None:
    tb = ["Traceback (most recent call last):", "x" * 5000, "ValueError: " + "v" * 5000]
    reply = render(
        execution(
            [result({"text/plain": "r" * 5000}), error("ValueError", "v" * 5000, tb)],
            status="error",
        ),
        ReplyLimits(max_stream_chars=200),
    )
    assert reply.report.result is not None
    assert len(reply.report.result) < 300
    assert "characters cut" in reply.report.result
    assert reply.report.error is not None
    assert len(reply.report.error.traceback) < 300
    assert reply.report.error.traceback.startswith("Traceback (most recent call last):")
    assert reply.report.error.traceback.endswith("v" * 40)
    assert len(reply.report.error.evalue) < 300
    assert reply.report.truncated


@settings(max_examples=60)
@given(
    text=st.text(
        st.characters(exclude_characters="\x1b", exclude_categories=("Cs",)), max_size=400
    ),
    limit=st.integers(min_value=4, max_value=300),
)
def test_cut_streams_are_a_prefix_and_suffix_of_the_original(text: str, limit: int) -> None:
    reply = render(execution([out(text)]), ReplyLimits(max_stream_chars=limit))
    stdout = reply.report.stdout
    if len(text) <= limit:
        assert stdout == text
        assert not reply.report.truncated
        return
    head = text[: limit * 3 // 4]
    tail = text[len(text) - (limit - limit * 3 // 4) :]
    assert stdout == f"{head}\n[… {len(text) - limit} characters cut …]\n{tail}"
    assert reply.report.truncated


def test_lone_surrogates_are_replaced_so_the_reply_stays_valid_json() -> None:
    reply = render(execution([out("bad \ud800 char\n")]), ReplyLimits())
    assert reply.report.stdout == "bad ? char\n"
    reply.report.model_dump_json()  # would raise on a lone surrogate


# --- rich outputs -------------------------------------------------------------------------


def test_text_plain_is_preferred_over_html() -> None:
    reply = render(
        execution([result({"text/plain": "   a\n0  1", "text/html": "<table>…</table>"})]),
        ReplyLimits(),
    )
    assert reply.report.result == "   a\n0  1"
    assert reply.report.mime_types == ["text/plain", "text/html"]


def test_ipython_default_repr_gives_way_to_html() -> None:
    reply = render(
        execution(
            [
                result(
                    {"text/plain": "<IPython.core.display.HTML object>", "text/html": "<b>bold</b>"}
                )
            ]
        ),
        ReplyLimits(),
    )
    assert reply.report.result == "<b>bold</b>"


def test_ipython_default_repr_gives_way_to_markdown_before_html() -> None:
    reply = render(
        execution(
            [
                display(
                    {
                        "text/plain": "<IPython.core.display.Markdown object>",
                        "text/markdown": "# Title",
                        "text/html": "<h1>Title</h1>",
                    }
                )
            ]
        ),
        ReplyLimits(),
    )
    assert "--- display (text/html, text/markdown, text/plain) ---\n# Title" in reply.text


def test_ipython_default_repr_is_kept_when_nothing_better_exists() -> None:
    reply = render(
        execution(
            [
                result(
                    {
                        "text/plain": "<IPython.core.display.Javascript object>",
                        "application/javascript": "alert(1)",
                    }
                )
            ]
        ),
        ReplyLimits(),
    )
    assert reply.report.result == "<IPython.core.display.Javascript object>"


def test_json_only_result_is_shown_as_json() -> None:
    reply = render(execution([result({"application/json": {"a": [1, 2]}})]), ReplyLimits())
    assert reply.report.result is not None
    assert reply.report.result.replace(" ", "").replace("\n", "") == '{"a":[1,2]}'


def test_text_plain_given_as_a_list_of_lines() -> None:
    reply = render(execution([result({"text/plain": ["line 1\n", "line 2"]})]), ReplyLimits())
    assert reply.report.result == "line 1\nline 2"


def test_displays_appear_in_the_text_not_the_result() -> None:
    reply = render(execution([display({"text/plain": "shown"}), out("after\n")]), ReplyLimits())
    assert reply.report.result is None
    assert "--- display (text/plain) ---\nshown" in reply.text
    assert reply.report.mime_types == ["text/plain"]


def test_mime_types_list_each_type_once_in_order_of_appearance() -> None:
    reply = render(
        execution(
            [
                display({"text/plain": "a", "text/html": "<i>a</i>"}),
                display({"image/png": b64(png()), "text/plain": "<Figure>"}),
                result({"text/plain": "b", "text/latex": "$b$"}),
            ]
        ),
        ReplyLimits(),
    )
    assert reply.report.mime_types == [
        "text/plain",
        "text/html",
        "image/png",
        "text/latex",
    ]


# --- images --------------------------------------------------------------------------------


def test_png_becomes_an_image_block() -> None:
    data = b64(png(4, 3))
    reply = render(
        execution([display({"image/png": data, "text/plain": "<Figure size 4x3>"})]),
        ReplyLimits(),
    )
    assert reply.images == [Image(mime_type="image/png", data=data)]
    assert base64.b64decode(reply.images[0].data, validate=True) == png(4, 3)
    assert reply.report.images == 1
    assert reply.text.endswith("[1 image(s) follow]")
    assert "<Figure size 4x3>" not in reply.text
    assert not reply.report.truncated


def test_jpeg_is_an_image_too_and_newlines_in_base64_are_removed() -> None:
    raw = b"\xff\xd8\xff\xe0" + bytes(range(200)) + b"\xff\xd9"
    wrapped = "\n".join(b64(raw)[i : i + 76] for i in range(0, len(b64(raw)), 76)) + "\n"
    reply = render(execution([display({"image/jpeg": wrapped})]), ReplyLimits())
    assert reply.images == [Image(mime_type="image/jpeg", data=b64(raw))]


def test_max_images_is_honoured_with_a_note() -> None:
    images = [display({"image/png": b64(png(2, 2, noise=i))}) for i in range(5)]
    reply = render(execution(images), ReplyLimits(max_images=2))
    assert [i.data for i in reply.images] == [o["data"]["image/png"] for o in images[:2]]
    assert reply.report.images == 2
    assert reply.report.truncated
    assert "3 image(s) left out: over 2 images or 524288 bytes each." in reply.report.notes


def test_max_image_bytes_is_honoured_with_a_note() -> None:
    small, big = png(2, 2), png(64, 64)
    assert len(small) < 1000 < len(big)
    reply = render(
        execution([display({"image/png": b64(big)}), display({"image/png": b64(small)})]),
        ReplyLimits(max_image_bytes=1000),
    )
    assert reply.images == [Image("image/png", b64(small))]
    assert reply.report.truncated
    assert "1 image(s) left out: over 8 images or 1000 bytes each." in reply.report.notes


def test_max_images_zero_sends_no_image() -> None:
    reply = render(execution([display({"image/png": b64(png())})]), ReplyLimits(max_images=0))
    assert reply.images == []
    assert reply.report.images == 0


@pytest.mark.parametrize("payload", ["not base64!!", "abc", "=AAA", "@@@@", "iVBOR w0K"])
def test_invalid_base64_is_skipped(payload: str) -> None:
    good = b64(png())
    reply = render(
        execution([display({"image/png": payload}), display({"image/png": good})]),
        ReplyLimits(),
    )
    assert reply.images == [Image("image/png", good)]
    assert reply.report.images == 1
    assert reply.report.truncated


# --- the whole reply fits ------------------------------------------------------------------


@cache
def big_inputs() -> dict[str, list[NotebookNode]]:
    tb = ["\x1b[31mTraceback\x1b[0m", "t" * 2_000_000, "ValueError: " + "v" * 100_000]
    return {
        "ascii_streams": [
            out("o" * 3_000_000),
            err("e" * 3_000_000),
            result({"text/plain": "r" * 3_000_000}),
        ],
        "non_ascii_streams": [
            out("€" * 500_000),
            err("中" * 500_000),
            result({"text/plain": "é" * 500_000}),
        ],
        "emoji": [out("😀" * 500_000), display({"text/plain": "😀" * 500_000})],
        "huge_traceback": [out("o" * 100_000), error("ValueError", "v" * 2_000_000, tb)],
        "many_images": [display({"image/png": b64(png(300, 300, noise=i))}) for i in range(8)],
        "many_displays": [display({"text/plain": "😀" * 10_000}) for _ in range(1000)],
        "everything": [
            out("o" * 1_000_000),
            *[display({"image/png": b64(png(300, 300, noise=i))}) for i in range(8)],
            *[display({"text/html": "<p>" + "h" * 50_000}) for _ in range(20)],
            error("E", "x" * 1_000_000, ["y" * 1_000_000]),
        ],
    }


@pytest.mark.parametrize("case", list(big_inputs()))
@pytest.mark.parametrize("max_reply_bytes", [900 * 1024, 100_000])
def test_the_whole_reply_stays_within_max_reply_bytes(case: str, max_reply_bytes: int) -> None:
    outputs = copy.deepcopy(big_inputs()[case])
    limits = ReplyLimits(max_reply_bytes=max_reply_bytes)
    reply = render(execution(outputs, status="error"), limits, notebook="notebook://n.ipynb")
    assert reply_bytes(reply) <= max_reply_bytes
    assert reply.report.truncated
    assert reply.report.images == len(reply.images)
    assert "The full output is in the notebook notebook://n.ipynb." in reply.report.notes


def test_images_are_dropped_first_to_fit() -> None:
    images = [display({"image/png": b64(png(120, 120, noise=i))}) for i in range(8)]
    one = len(b64(png(120, 120)))
    limits = ReplyLimits(max_reply_bytes=3 * one + 5000)
    reply = render(execution([out("short\n"), *images]), limits)
    assert reply_bytes(reply) <= limits.max_reply_bytes
    assert len(reply.images) == 3
    assert reply.report.images == 3
    assert reply.report.stdout == "short\n"
    assert "Images dropped to keep the reply under KERNEL_MCP_MAX_REPLY_BYTES." in (
        reply.report.notes
    )


def test_small_reply_is_not_touched_by_the_budget() -> None:
    text = digits(50_000)
    reply = render(execution([out(text)]), ReplyLimits())
    assert reply.report.stdout == text
    assert not reply.report.truncated


def test_an_answered_input_s_echo_is_left_out_of_the_reply() -> None:
    echo = new_output("stream", name="stdin", text="Name? Ada\n")
    reply = render(execution([out("before\n"), echo, out("after\n")]), ReplyLimits())
    assert reply.report.stdout == "before\nafter\n"
    assert "Ada" not in reply.text
