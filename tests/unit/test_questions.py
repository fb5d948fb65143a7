"""Specification of ``kernel_mcp.runner.questions``: what a question the running code asks says,
and when a run stops asking (over real servers and both eras: test_server_input.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_mcp.runner.questions import (
    DECLINES_BEFORE_EOF,
    MAX_PROMPT_CHARS,
    Asking,
    Question,
    asker_of,
    clean_text,
)
from tests.corpus.prompts import PROMPTS, Prompt


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: p.id)
def test_clean_text_removes_escapes_controls_line_breaks_and_bidi(prompt: Prompt) -> None:
    assert clean_text(prompt.raw) == prompt.shown


def test_a_prompt_of_exactly_the_limit_is_not_cut() -> None:
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
