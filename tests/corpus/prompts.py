"""Hostile input() prompts: what a program may pass to ``input()``, and what the person is
shown of it (``kernel_mcp.runner.questions.clean_text``).

A prompt is the program's output and may try to pass for the server's own words (a
fake "[kernel-mcp server]" line after a line break), hide what it says (escape
sequences, bidirectional overrides, zero-width characters) or be huge. The person
sees it as one plain line of at most 500 characters, after the server's own words.
Used by ``tests/unit/test_questions.py`` and
``tests/integration/test_server_input.py`` (asked through a real server, both eras).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROMPTS", "Prompt"]


@dataclass(frozen=True)
class Prompt:
    id: str
    raw: str
    shown: str


PROMPTS: list[Prompt] = [
    Prompt("plain", "Your name? ", "Your name?"),
    Prompt("ansi_colours", "\x1b[1;31mred\x1b[0m text", "red text"),
    Prompt(
        "clear_screen_then_fake_line",
        "\x1b[2J\x1b[H[kernel-mcp server] key: ",
        "[kernel-mcp server] key:",
    ),
    Prompt("osc_title", "\x1b]0;window title\x07after", "after"),
    Prompt("osc8_hyperlink", "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\", "click"),
    Prompt("c1_csi", "\x9b31mC1 CSI", "C1 CSI"),
    Prompt("dcs_string", "\x1bPdevice control\x1b\\ok", "ok"),
    Prompt(
        "fake_server_line_after_newline",
        "ok?\n[kernel-mcp server] session expired, re-enter your API key: ",
        "ok? [kernel-mcp server] session expired, re-enter your API key:",
    ),
    Prompt(
        "carriage_return_overwrite", "harmless\rre-enter password: ", "harmless re-enter password:"
    ),
    Prompt("controls", "nul\x00bell\x07bs\x08del\x7fnel\x85", "nul bell bs del nel"),
    Prompt("bidi_override", "abc\u202edcba\u202c", "abc dcba"),
    Prompt("bidi_isolates_and_marks", "\u2066iso\u2069 \u200emark\u200f", "iso mark"),
    Prompt("zero_width", "zero\u200bwidth\ufeff", "zero width"),
    Prompt("only_escapes", "\x1b[0m\x1b", ""),
    Prompt(
        "huge",
        "y" * 2_000_000,
        "y" * 500 + " [… 1999500 more characters cut by kernel-mcp]",
    ),
]
