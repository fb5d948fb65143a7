"""IOPub messages in, nbformat outputs out: the collector fed scripted messages.

Messages are shaped like the ones a Jupyter kernel sends (header, parent
header, content); the expected outputs are what JupyterLab would show and
what a notebook would store.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kernel_mcp.kernels.outputs
from kernel_mcp.kernels.outputs import (
    GUARD_METADATA_KEY,
    PASSWORD_MASK,
    OutputCollector,
    OutputLimits,
    apply_control_chars,
    error_from_reply,
    output_size,
    strip_ansi,
)

_ids = itertools.count()


def message(msg_type: str, **content: Any) -> dict[str, Any]:
    """An IOPub message as jupyter_client delivers it (parent = our request)."""
    return {
        "header": {"msg_type": msg_type, "msg_id": f"msg-{next(_ids)}", "session": "s"},
        "parent_header": {"msg_type": "execute_request", "msg_id": "req-1"},
        "metadata": {},
        "content": content,
    }


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return message("stream", name=name, text=text)


def display(data: dict[str, Any], display_id: str | None = None) -> dict[str, Any]:
    transient = {"display_id": display_id} if display_id else {}
    return message("display_data", data=data, metadata={}, transient=transient)


def update(data: dict[str, Any], display_id: str) -> dict[str, Any]:
    return message(
        "update_display_data", data=data, metadata={}, transient={"display_id": display_id}
    )


def clear(wait: bool) -> dict[str, Any]:
    return message("clear_output", wait=wait)


def collect(*messages: dict[str, Any], limits: OutputLimits | None = None) -> OutputCollector:
    collector = OutputCollector(limits)
    for msg in messages:
        collector.feed(msg)
    return collector


def texts(collector: OutputCollector) -> list[tuple[str, str]]:
    """(name, text) of each stream output, in order."""
    return [(o["name"], o["text"]) for o in collector.outputs if o["output_type"] == "stream"]


def kept_chars(collector: OutputCollector) -> int:
    return sum(output_size(o) for o in collector.outputs)


# --- control characters ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain\n", "plain\n"),
        ("abc\rde\n", "de\n"),
        ("abc\r\n", "abc\n"),
        ("a\r\nb\r\n", "a\nb\n"),
        ("a\r\r\nb", "a\nb"),
        ("1%\r2%\r3%\ndone\n", "3%\ndone\n"),
        ("keep\nabc\rxy", "keep\nxy"),
        ("abc\r", ""),
        ("ab\bc", "ac"),
        ("ab\b\b", ""),
        ("abc\b\bX", "aX"),
        ("\b\ba", "a"),
        ("line\n\bnext", "line\nnext"),
        ("ab\r\bc", "c"),
        ("", ""),
    ],
)
def test_apply_control_chars(raw: str, shown: str) -> None:
    assert apply_control_chars(raw) == shown


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[1;32;40mbold\x1b[m text", "bold text"),
        ("\x1b[2K\x1b[1Gprogress", "progress"),
        ("\x1b]0;window title\x07after", "after"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("no escapes [31m here", "no escapes [31m here"),
    ],
)
def test_strip_ansi(raw: str, plain: str) -> None:
    assert strip_ansi(raw) == plain


# --- streams ---------------------------------------------------------------------


def test_stream_messages_merge_into_one_output() -> None:
    collector = collect(stream("a"), stream("b\n"), stream("c"))
    assert collector.outputs == [{"output_type": "stream", "name": "stdout", "text": "ab\nc"}]


def test_carriage_return_erases_the_line_so_far() -> None:
    assert texts(collect(stream("abc\rde\n"))) == [("stdout", "de\n")]


@pytest.mark.parametrize(
    "chunks",
    [
        ["abc\r", "de\n"],
        ["abc", "\rde\n"],
        ["abc", "\r", "de", "\n"],
        ["a", "b", "c", "\r", "d", "e", "\n"],
    ],
)
def test_carriage_return_across_messages(chunks: list[str]) -> None:
    assert texts(collect(*map(stream, chunks))) == [("stdout", "de\n")]


@pytest.mark.parametrize("chunks", [["abc\r\n"], ["abc\r", "\n"], ["abc", "\r", "\n"]])
def test_crlf_is_a_newline_even_split(chunks: list[str]) -> None:
    assert texts(collect(*map(stream, chunks))) == [("stdout", "abc\n")]


def test_backspace_across_messages() -> None:
    assert texts(collect(stream("ab"), stream("\bc\n"))) == [("stdout", "ac\n")]


def test_progress_bar_keeps_only_its_last_state() -> None:
    chunks = [f"\r{pct:3d}%" for pct in range(0, 101, 10)] + ["\n", "finished\n"]
    assert texts(collect(*map(stream, chunks))) == [("stdout", "100%\nfinished\n")]


def test_stdout_and_stderr_interleaved_stay_separate_and_ordered() -> None:
    collector = collect(
        stream("1\n"),
        stream("2\n"),
        stream("E1\n", "stderr"),
        stream("3\n"),
        stream("E2\n", "stderr"),
        stream("E3\n", "stderr"),
    )
    assert texts(collector) == [
        ("stdout", "1\n2\n"),
        ("stderr", "E1\n"),
        ("stdout", "3\n"),
        ("stderr", "E2\nE3\n"),
    ]


def test_stream_after_a_display_starts_a_new_output() -> None:
    collector = collect(stream("before\n"), display({"text/plain": "D"}), stream("after\n"))
    assert [o["output_type"] for o in collector.outputs] == ["stream", "display_data", "stream"]
    assert texts(collector) == [("stdout", "before\n"), ("stdout", "after\n")]


def test_reading_outputs_is_repeatable_and_feeding_may_continue() -> None:
    collector = collect(stream("abc\rx"))
    first = [dict(o) for o in collector.outputs]
    assert first == [dict(o) for o in collector.outputs]
    assert texts(collector) == [("stdout", "x")]
    collector.feed(stream("y\n"))
    assert texts(collector) == [("stdout", "xy\n")]


# --- clear_output ----------------------------------------------------------------


def test_clear_output_now_clears_at_once() -> None:
    collector = collect(stream("old\n"), display({"text/plain": "old"}), clear(wait=False))
    assert collector.outputs == []
    collector.feed(stream("new\n"))
    assert texts(collector) == [("stdout", "new\n")]


def test_clear_output_wait_clears_when_the_next_output_arrives() -> None:
    collector = collect(stream("old\n"), clear(wait=True))
    assert texts(collector) == [("stdout", "old\n")]
    collector.feed(stream("new\n"))
    assert texts(collector) == [("stdout", "new\n")]


@pytest.mark.parametrize(
    "next_output",
    [
        pytest.param(display({"text/plain": "new"}), id="display_data"),
        pytest.param(
            message("execute_result", data={"text/plain": "new"}, metadata={}, execution_count=1),
            id="execute_result",
        ),
        pytest.param(message("error", ename="E", evalue="new", traceback=[]), id="error"),
    ],
)
def test_clear_output_wait_is_flushed_by_any_output(next_output: dict[str, Any]) -> None:
    collector = collect(stream("old\n"), display({"text/plain": "old"}), clear(wait=True))
    assert len(collector.outputs) == 2
    collector.feed(next_output)
    assert len(collector.outputs) == 1
    assert collector.outputs[0]["output_type"] == next_output["header"]["msg_type"]


def test_clear_output_wait_without_a_next_output_clears_nothing() -> None:
    idle = message("status", execution_state="idle")
    collector = collect(stream("kept\n"), clear(wait=True), idle)
    assert texts(collector) == [("stdout", "kept\n")]


def test_clear_output_wait_happens_once() -> None:
    collector = collect(stream("a\n"), clear(wait=True), stream("b\n"), stream("c\n"))
    assert texts(collector) == [("stdout", "b\nc\n")]


def test_animation_with_clear_wait_keeps_the_last_frame() -> None:
    frames = []
    for i in range(5):
        frames += [clear(wait=True), display({"text/plain": f"frame {i}"})]
    collector = collect(*frames)
    assert [o["data"]["text/plain"] for o in collector.outputs] == ["frame 4"]


# --- displays --------------------------------------------------------------------


def test_update_display_data_updates_every_output_with_that_id() -> None:
    collector = collect(
        display({"text/plain": "p0"}, "p"),
        display({"text/plain": "q0"}, "q"),
        display({"text/plain": "plain"}),
        display({"text/plain": "p0 again"}, "p"),
        update({"text/plain": "p1", "text/html": "<b>p1</b>"}, "p"),
    )
    assert [o["data"] for o in collector.outputs] == [
        {"text/plain": "p1", "text/html": "<b>p1</b>"},
        {"text/plain": "q0"},
        {"text/plain": "plain"},
        {"text/plain": "p1", "text/html": "<b>p1</b>"},
    ]


def test_update_display_data_for_an_unknown_id_changes_nothing() -> None:
    collector = collect(display({"text/plain": "p0"}, "p"), update({"text/plain": "x"}, "zzz"))
    assert [o["data"] for o in collector.outputs] == [{"text/plain": "p0"}]


def test_update_display_data_is_not_a_new_output() -> None:
    collector = collect(display({"text/plain": "p0"}, "p"), update({"text/plain": "p1"}, "p"))
    assert len(collector.outputs) == 1


def test_update_after_clear_does_not_bring_the_output_back() -> None:
    collector = collect(
        display({"text/plain": "p0"}, "p"), clear(wait=False), update({"text/plain": "p1"}, "p")
    )
    assert collector.outputs == []


def test_display_data_keeps_data_and_metadata() -> None:
    msg = message(
        "display_data",
        data={"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="},
        metadata={"image/png": {"width": 10}},
        transient={},
    )
    (output,) = collect(msg).outputs
    assert output == {
        "output_type": "display_data",
        "data": {"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="},
        "metadata": {"image/png": {"width": 10}},
    }


# --- results and errors --------------------------------------------------------------


def test_execute_input_and_execute_result_set_the_execution_count() -> None:
    collector = collect(message("execute_input", code="1+1", execution_count=7))
    assert collector.execution_count == 7
    collector.feed(
        message("execute_result", data={"text/plain": "2"}, metadata={}, execution_count=7)
    )
    assert collector.execution_count == 7
    assert collector.outputs == [
        {
            "output_type": "execute_result",
            "data": {"text/plain": "2"},
            "metadata": {},
            "execution_count": 7,
        }
    ]


def test_execute_result_alone_sets_the_execution_count() -> None:
    collector = collect(
        message("execute_result", data={"text/plain": "2"}, metadata={}, execution_count=3)
    )
    assert collector.execution_count == 3


def test_error_is_recorded_and_kept_as_an_output() -> None:
    traceback = ["\x1b[31mTraceback\x1b[0m", "ZeroDivisionError: division by zero"]
    collector = collect(
        stream("before\n"),
        message("error", ename="ZeroDivisionError", evalue="division by zero", traceback=traceback),
    )
    assert collector.error is not None
    assert collector.error["ename"] == "ZeroDivisionError"
    assert collector.error["evalue"] == "division by zero"
    assert collector.error["traceback"] == traceback
    assert [o["output_type"] for o in collector.outputs] == ["stream", "error"]
    assert collector.outputs[-1] == collector.error


def test_no_error_means_error_is_none() -> None:
    assert collect(stream("fine\n")).error is None


def test_status_and_unknown_messages_are_ignored() -> None:
    collector = collect(
        message("status", execution_state="busy"),
        message("comm_open", comm_id="c", target_name="t", data={}),
        message("execute_input", code="x", execution_count=1),
        message("status", execution_state="idle"),
    )
    assert collector.outputs == []
    assert collector.error is None
    assert not collector.truncated


# --- caps ------------------------------------------------------------------------


def test_stream_over_the_cap_keeps_exactly_the_cap_in_one_message() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=10)
    collector = collect(stream("x" * 1500), limits=limits)
    assert texts(collector) == [("stdout", "x" * 1000)]
    assert collector.dropped_chars == 500
    assert collector.truncated


def test_stream_over_the_cap_keeps_exactly_the_cap_over_many_messages() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=10)
    line = "0123456789abcdefghi\n"  # 20 characters
    collector = collect(*[stream(line)] * 80, limits=limits)
    ((_, text),) = texts(collector)
    assert text == line * 50
    assert collector.dropped_chars == 30 * len(line)


def test_stream_at_the_cap_drops_nothing() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=10)
    collector = collect(stream("y" * 999 + "\n"), limits=limits)
    assert texts(collector) == [("stdout", "y" * 999 + "\n")]
    assert collector.dropped_chars == 0
    assert not collector.truncated


def test_each_stream_output_has_its_own_cap() -> None:
    limits = OutputLimits(max_output_bytes=100, max_outputs=10)
    collector = collect(stream("o" * 150), stream("e" * 150, "stderr"), limits=limits)
    assert texts(collector) == [("stdout", "o" * 100), ("stderr", "e" * 100)]
    assert collector.dropped_chars == 100


def test_outputs_beyond_max_outputs_are_counted_not_kept() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=3)
    collector = collect(*[display({"text/plain": f"d{i}"}) for i in range(5)], limits=limits)
    assert [o["data"]["text/plain"] for o in collector.outputs] == ["d0", "d1", "d2"]
    assert collector.dropped_outputs == 2
    assert collector.dropped_chars == 4  # "d3" and "d4"
    assert collector.truncated


def test_streams_beyond_max_outputs_are_counted_not_kept() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=2)
    collector = collect(
        stream("a\n"), stream("b\n", "stderr"), stream("c\n"), stream("d\n"), limits=limits
    )
    assert texts(collector) == [("stdout", "a\n"), ("stderr", "b\n")]
    assert collector.dropped_outputs == 2
    assert collector.dropped_chars == 4


def test_display_over_the_cap_is_replaced_by_a_notice() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=10)
    big = {"text/plain": "p" * 600, "text/html": "h" * 600}
    collector = collect(display(big), limits=limits)
    (output,) = collector.outputs
    notice = output["data"]["text/plain"]
    assert list(output["data"]) == ["text/plain"]
    assert output["metadata"] == {}
    assert "1200 characters" in notice
    assert "text/html, text/plain" in notice
    assert "p" * 50 not in notice
    assert collector.dropped_chars == 1200
    assert collector.truncated


def test_update_over_the_cap_is_replaced_by_a_notice() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=10)
    collector = collect(
        display({"text/plain": "small"}, "p"),
        update({"text/plain": "u" * 5000}, "p"),
        limits=limits,
    )
    (output,) = collector.outputs
    assert "5000 characters" in output["data"]["text/plain"]
    assert collector.dropped_chars == 5000


def test_error_beyond_max_outputs_is_still_reported() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=1)
    collector = collect(
        stream("fills the only slot\n"),
        message("error", ename="KeyError", evalue="'k'", traceback=["KeyError: 'k'"]),
        limits=limits,
    )
    assert collector.error is not None
    assert collector.error["ename"] == "KeyError"
    assert [o["output_type"] for o in collector.outputs] == ["stream"]
    assert collector.dropped_outputs == 1


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(("y" * 99 + "\n") * 1000, id="lines"),
        pytest.param("z" * 100_000, id="no_newline"),
    ],
)
def test_flood_keeps_memory_bounded(chunk: str) -> None:
    cap = 1024 * 1024
    assert len(chunk) == 100_000
    collector = OutputCollector(OutputLimits(max_output_bytes=cap, max_outputs=1000))
    for _ in range(2000):
        collector.feed(stream(chunk))
    assert len(collector.outputs) == 1
    assert kept_chars(collector) == cap
    assert collector.dropped_chars == 2000 * len(chunk) - cap
    assert collector.outputs[0]["text"] == (chunk * 11)[:cap]


def test_progress_bar_flood_keeps_only_its_last_state() -> None:
    # Text erased by '\r' is neither kept nor counted as dropped, however long the
    # line grows before its newline.
    cap = 1024 * 1024
    collector = OutputCollector(OutputLimits(max_output_bytes=cap, max_outputs=1000))
    chunk = ("\r" + "w" * 99) * 1000
    for _ in range(2000):
        collector.feed(stream(chunk))
    collector.feed(stream("\r" + "done", "stdout"))
    collector.feed(stream("\n"))
    assert texts(collector) == [("stdout", "done\n")]
    assert not collector.truncated


def test_progress_bar_under_a_small_cap() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=10)
    chunks = [f"\r{i:3d}%" + "." * 96 for i in range(30)] + ["\n"]
    collector = collect(*map(stream, chunks), limits=limits)
    assert texts(collector) == [("stdout", " 29%" + "." * 96 + "\n")]
    assert collector.dropped_chars == 0


def test_flood_of_alternating_streams_is_bounded_by_max_outputs() -> None:
    cap, max_outputs = 10_000, 50
    collector = OutputCollector(OutputLimits(max_output_bytes=cap, max_outputs=max_outputs))
    for i in range(2000):
        collector.feed(stream("v" * 20_000, "stderr" if i % 2 else "stdout"))
    assert len(collector.outputs) == max_outputs
    assert kept_chars(collector) == cap * max_outputs
    # A message that continues the last stream is not a new output; only the
    # other stream's messages would have been.
    assert collector.dropped_outputs == (2000 - max_outputs) // 2
    assert collector.dropped_chars == 2000 * 20_000 - cap * max_outputs


# --- latest_line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "latest"),
    [
        (["a\nb\n"], "b"),
        (["first\n", "second"], "second"),
        (["x\n\n\n"], "x"),
        (["x\n", "\n"], "x"),
        (["step 1\r", "step 2\r"], "step 2"),
        (["ab\rcd"], "cd"),
        (["\x1b[32mgreen\x1b[0m\n"], "green"),
        ([], ""),
    ],
)
def test_latest_line_is_the_last_non_empty_line(chunks: list[str], latest: str) -> None:
    assert collect(*map(stream, chunks)).latest_line == latest


def test_latest_line_follows_whichever_stream_wrote_last() -> None:
    collector = collect(stream("out\n"), stream("err\n", "stderr"))
    assert collector.latest_line == "err"
    collector.feed(stream("out again\n"))
    assert collector.latest_line == "out again"


def test_latest_line_is_at_most_200_characters() -> None:
    collector = collect(stream("L" * 1000 + "\n"))
    assert collector.latest_line == "L" * 200


# --- property: chunking does not change the text ------------------------------------

CONTROL_TEXT = st.text(alphabet=["a", "b", "\n", "\r", "\b"], max_size=60)


@given(text=CONTROL_TEXT, data=st.data())
def test_any_chunking_gives_the_same_text_as_one_message(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    chunks = [text[start:end] for start, end in itertools.pairwise([0, *cuts, len(text)])]
    assert "".join(chunks) == text
    whole = collect(stream(text))
    pieces = collect(*map(stream, chunks))
    assert pieces.outputs == whole.outputs
    if text:
        assert whole.outputs[0]["text"] == apply_control_chars(text)


@given(
    chunks=st.lists(st.text(alphabet=["a", "\n", "\r", "\b"], max_size=40), max_size=30),
    cap=st.integers(1, 64),
)
def test_a_stream_never_keeps_more_than_the_cap(chunks: list[str], cap: int) -> None:
    collector = collect(*map(stream, chunks), limits=OutputLimits(max_output_bytes=cap))
    for _, text in texts(collector):
        assert len(text) <= cap
    kept = sum(len(text) for _, text in texts(collector))
    fed = sum(map(len, chunks))
    assert kept + collector.dropped_chars <= fed


def test_an_oversized_error_stays_a_valid_nbformat_error() -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    huge = message("error", ename="ValueError", evalue="v" * 5_000, traceback=["frame " * 200] * 50)
    collector = collect(huge, limits=OutputLimits(max_output_bytes=2_000))
    (output,) = collector.outputs
    assert "data" not in output
    assert sum(len(line) for line in output["traceback"]) + len(output["evalue"]) <= 2_100
    assert output["traceback"][-1].endswith("[… traceback cut: over the limit …]")
    assert collector.dropped_chars > 0
    cell = new_code_cell("raise ValueError")
    cell.outputs = collector.outputs
    nbformat.validate(new_notebook(cells=[cell]))


# --- a full collector, the kernel-side guard's totals ---------------------------------


def test_a_full_collector_counts_further_outputs_without_building_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    real = kernel_mcp.kernels.outputs.output_from_msg

    def counting(msg: dict[str, Any]) -> Any:
        built.append(msg["header"]["msg_type"])
        return real(msg)

    monkeypatch.setattr(kernel_mcp.kernels.outputs, "output_from_msg", counting)
    limits = OutputLimits(max_output_bytes=1000, max_outputs=3)
    collector = collect(*[display({"text/plain": f"d{i:03d}"}) for i in range(100)], limits=limits)

    assert len(built) == 3
    assert len(collector.outputs) == 3
    assert collector.dropped_outputs == 97
    assert collector.dropped_chars == 97 * 4


def test_a_clear_makes_room_in_a_full_collector_again() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=2)
    collector = collect(
        display({"text/plain": "a"}),
        display({"text/plain": "b"}),
        display({"text/plain": "dropped"}),
        clear(wait=True),
        display({"text/plain": "after"}),
        limits=limits,
    )
    assert [o["data"]["text/plain"] for o in collector.outputs] == ["after"]
    assert collector.dropped_outputs == 1


def guard_notice(text: str, outputs: int, chars: int, *, update_of: str | None = None) -> Any:
    totals = {GUARD_METADATA_KEY: {"dropped_outputs": outputs, "dropped_chars": chars}}
    kind = "update_display_data" if update_of else "display_data"
    transient = {"display_id": update_of or "guard"}
    return message(kind, data={"text/plain": text}, metadata=totals, transient=transient)


def test_the_guard_s_totals_count_as_dropped_and_its_final_update_wins() -> None:
    collector = collect(
        display({"text/plain": "kept"}),
        guard_notice("[kernel-mcp: dropping]", 1, 3),
        guard_notice("[kernel-mcp: 40 dropped]", 40, 120, update_of="guard"),
    )
    assert [o["data"]["text/plain"] for o in collector.outputs] == [
        "kept",
        "[kernel-mcp: 40 dropped]",
    ]
    assert collector.dropped_outputs == 40
    assert collector.dropped_chars == 120
    assert collector.truncated


def test_the_guard_s_totals_are_read_even_when_the_collector_is_full() -> None:
    limits = OutputLimits(max_output_bytes=1000, max_outputs=1)
    collector = collect(
        display({"text/plain": "only"}), guard_notice("[kernel-mcp: x]", 7, 9), limits=limits
    )
    assert collector.dropped_outputs == 7 + 1  # the guard's, and its notice
    assert collector.dropped_chars == 9 + len("[kernel-mcp: x]")


def test_error_from_a_reply_keeps_its_names_and_explains_a_missing_traceback() -> None:
    node = error_from_reply({"status": "error", "ename": "UnicodeEncodeError", "evalue": "bad"})
    assert (node["ename"], node["evalue"]) == ("UnicodeEncodeError", "bad")
    assert node["traceback"][0] == "UnicodeEncodeError: bad"
    assert "no error output" in node["traceback"][1]

    aborted = error_from_reply({"status": "aborted"})
    assert aborted["ename"] == "ExecutionAborted"
    assert aborted["traceback"]

    bare = error_from_reply({"status": "error"})
    assert bare["ename"] == "KernelError"
    assert bare["traceback"][0] == "KernelError"


def test_an_error_added_from_a_reply_is_an_output_and_the_error() -> None:
    collector = collect(stream("before\n"))
    node = error_from_reply({"status": "error", "ename": "E", "evalue": "v", "traceback": ["t"]})
    collector.add_error(node)
    assert collector.error is node
    assert collector.outputs[-1] is node


def test_malformed_rich_outputs_become_valid_notebook_outputs():
    # Hostile or buggy code can publish data nbformat would refuse; the run keeps
    # its reply and its notebook stays valid.
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    collector = collect(
        display({"text/plain": 123, "text/html": ["<b>", "x</b>"], "application/json": {"k": 1}}),
        message("display_data", data="not a bundle", metadata="not a dict", transient={}),
        message("execute_result", data={"text/plain": None}, metadata={}, execution_count="seven"),
        message("error", ename=None, evalue=5, traceback=["a", 1]),
        stream("fine\n", name="weird-stream-name"),
    )
    outputs = collector.outputs
    assert outputs[0]["data"] == {
        "text/plain": "123",
        "text/html": "<b>x</b>",
        "application/json": {"k": 1},
    }
    assert outputs[1]["data"] == {} and outputs[1]["metadata"] == {}
    assert outputs[2]["execution_count"] is None
    cell = new_code_cell("x")
    cell.outputs = outputs
    nb = new_notebook(cells=[cell])
    nbformat.validate(nbformat.from_dict(json.loads(json.dumps(nb))))


def test_an_answered_input_is_echoed_as_a_stdin_stream_where_it_happened() -> None:
    collector = OutputCollector()
    collector.feed(stream("before\n"))
    collector.echo_input("Name? ", "Ada", password=False)
    collector.echo_input("Password: ", "s3cr3t", password=True)
    # The echo is the person's, not the program's: progress never shows it.
    assert collector.latest_line == "before"
    collector.feed(stream("after\n"))
    assert [(o["name"], o["text"]) for o in collector.outputs] == [
        ("stdout", "before\n"),
        ("stdin", f"Name? Ada\nPassword: {PASSWORD_MASK}\n"),
        ("stdout", "after\n"),
    ]
    assert "s3cr3t" not in json.dumps(collector.outputs)


def test_a_kernel_cannot_send_a_stream_that_passes_for_an_echo() -> None:
    collector = OutputCollector()
    collector.feed(stream("hidden?\n", name="stdin"))
    collector.feed(stream("odd\n", name="other"))
    assert [(o["name"], o["text"]) for o in collector.outputs] == [("stdout", "hidden?\nodd\n")]
