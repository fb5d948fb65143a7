"""Specification of ``kernel_mcp.questions``: what a question the running code asks says,
and when a run stops asking (over real servers and both eras: test_server_input.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_mcp.questions import (
    DECLINES_BEFORE_EOF,
    MAX_PROMPT_CHARS,
    Asking,
    Question,
    asker_of,
    clean_text,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Your name? ", "Your name?"),
        ("\x1b[1;31mred\x1b[0m text", "red text"),  # CSI
        ("\x1b]0;window title\x07after", "after"),  # OSC ended by BEL
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink, ended by ST
        ("\x9b31mC1 CSI", "C1 CSI"),
        ("\x1bPdevice control\x1b\\ok", "ok"),  # DCS
        ("line one\nline two\r\nthree", "line one line two three"),
        ("tab\there", "tab here"),
        ("nul\x00bell\x07del\x7fnel\x85", "nul bell del nel"),
        ("abc\u202edcba\u202c", "abc dcba"),  # right-to-left override
        ("\u2066isolate\u2069 \u200emark\u200f", "isolate mark"),
        ("zero\u200bwidth", "zero width"),
        ("", ""),
        ("\x1b", ""),
    ],
)
def test_clean_text_removes_escapes_controls_line_breaks_and_bidi(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_cuts_a_long_prompt_with_a_marker() -> None:
    cut = clean_text("y" * 2_000_000)
    assert cut == "y" * MAX_PROMPT_CHARS + " [… 1999500 more characters cut by kernel-mcp]"
    assert clean_text("y" * MAX_PROMPT_CHARS) == "y" * MAX_PROMPT_CHARS


@given(st.text())
def test_clean_text_is_one_plain_line_of_bounded_length(raw: str) -> None:
    clean = clean_text(raw)
    assert "\n" not in clean and "\r" not in clean and "\x1b" not in clean
    assert all(ch.isprintable() or ch == " " for ch in clean), repr(clean)
    assert len(clean) <= MAX_PROMPT_CHARS + 60


def test_a_question_says_who_asks_through_which_tool_and_file_then_the_prompt() -> None:
    question = Question("Key?", False, asker_of("demo"), "run_python", "pkg/main.py")
    assert question.message == (
        "kernel-mcp: run_python of pkg/main.py in session 'demo' asks for input (input()). "
        'The program\'s prompt: "Key?"'
    )
    password = Question("", True, asker_of(None), "run_code")
    assert password.message == (
        "kernel-mcp: run_code in a fresh run asks for a password (getpass). "
        "The program's prompt: (no prompt)"
    )


async def test_after_two_declines_a_run_stops_asking_and_says_so() -> None:
    asked: list[Question] = []
    answers = iter([None, "kept", None])

    async def handler(question: Question) -> str | None:
        asked.append(question)
        return next(answers)

    asking = Asking(handler, asker="a fresh run", tool="run_code")
    assert await asking("one? ", False) is None
    assert asking.notes() == []
    assert await asking("two? ", False) == "kept"
    assert await asking("three? ", False) is None
    assert asking.declined == DECLINES_BEFORE_EOF
    for _ in range(5):
        assert await asking("more? ", False) is None
    assert [q.prompt for q in asked] == ["one?", "two?", "three?"]
    assert asking.notes() == [
        "The person declined 2 questions of this run, so its 5 later input() call(s) raised "
        "EOFError without asking."
    ]


async def test_a_file_name_in_a_question_is_cleaned_too() -> None:
    asked: list[Question] = []

    async def handler(question: Question) -> str | None:
        asked.append(question)
        return "x"

    asking = Asking(handler, asker="a fresh run", tool="run_python", file="a\nb\x1b[31m.py")
    await asking("?", False)
    assert asked[0].file == "a b.py"
