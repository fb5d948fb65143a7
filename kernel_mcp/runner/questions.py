"""Questions the running code asks the person (``input()``, ``getpass``): what they say,
and when to stop asking.

The prompt is the kernel's output, written by whatever code runs: untrusted. A question
therefore says first, in the server's words, who asks (the session by name, or a fresh
run), through which tool and which file; then the program's prompt, cleaned of what could
pass for the server's own text or hide what it says (escape sequences, control
characters, line breaks, bidirectional overrides) and cut to 500 characters.

A person who declines (or cancels) twice in one run is not asked again in that run: each
later ``input()`` raises EOFError at once, and the reply says so. Without that, a program
that asks in a loop keeps asking as fast as the person can decline.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = [
    "DECLINES_BEFORE_EOF",
    "MAX_PROMPT_CHARS",
    "Asking",
    "Question",
    "QuestionHandler",
    "asker_of",
    "clean_text",
]

#: Longest prompt a question shows, in characters (a marker says how much was cut).
MAX_PROMPT_CHARS = 500
#: Declined or cancelled questions in one run after which input() stops asking.
DECLINES_BEFORE_EOF = 2

# ESC-introduced sequences: CSI (colours, cursor moves), OSC (titles, hyperlinks; ended by
# BEL or ST), DCS/SOS/PM/APC strings, and two-character escapes. Their C1 forms too.
_ESCAPES = re.compile(
    r"""
    (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?                       # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)  # OSC, DCS, SOS, PM, APC
    | \x1b[ -/]*[0-~]?                                      # other escapes
    """,
    re.VERBOSE | re.DOTALL,
)
_SPACES = re.compile(r"\s+")


def _shown(char: str) -> bool:
    """Whether a character may stand in a question: not a control (C0, C1, DEL) and not a
    format character (bidirectional overrides and isolates, zero-width joiners, marks)."""
    return unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn")


def clean_text(text: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """``text`` as one plain line for a question: escape sequences and control and format
    characters removed, runs of white space (line breaks included) made one space, and at
    most ``limit`` characters, with a marker saying how many more there were."""
    text = _ESCAPES.sub("", text)
    text = "".join(char if _shown(char) else " " for char in text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = f"{text[:limit]} [… {len(text) - limit} more characters cut by kernel-mcp]"
    return text


@dataclass(frozen=True, slots=True)
class Question:
    """One ``input()`` or ``getpass()`` of a run, as the person is asked it."""

    prompt: str
    """The program's prompt, cleaned (:func:`clean_text`)."""
    password: bool
    asker: str
    """Who asks: ``session 'name'``, or ``a fresh run``."""
    tool: str
    file: str | None = None
    """The file or notebook that runs, cleaned; None for a snippet."""

    @property
    def message(self) -> str:
        """The question's text: the server's words first, the program's prompt quoted."""
        what = f"{self.tool} of {self.file}" if self.file else self.tool
        asks = "a password (getpass)" if self.password else "input (input())"
        prompt = f'"{self.prompt}"' if self.prompt else "(no prompt)"
        head = f"kernel-mcp: {what} in {self.asker} asks for {asks}."
        return f"{head} The program's prompt: {prompt}"


QuestionHandler = Callable[[Question], Awaitable[str | None]]
"""Asks the person a question: their answer, or None (declined or cancelled)."""


class Asking:
    """One run's questions: asked through ``handler`` until ``DECLINES_BEFORE_EOF`` of them
    are declined; after that, every ``input()`` gets EOF without asking.

    An instance is the kernel's stdin handler for one run: ``(prompt, password) -> answer``.
    """

    def __init__(
        self, handler: QuestionHandler, *, asker: str, tool: str, file: str | None = None
    ) -> None:
        self.handler = handler
        self.asker = asker
        self.tool = tool
        self.file = clean_text(file, 200) if file is not None else None
        self.declined = 0
        self.unasked = 0
        """input() calls answered with EOF without asking, once the person had declined."""

    @classmethod
    def of_run(
        cls,
        handler: QuestionHandler | None,
        session_name: str | None,
        tool: str,
        file: str | None = None,
    ) -> Asking | None:
        """A run's asking through ``handler`` (None when nobody can be asked), in the
        session named ``session_name`` (None: a fresh run)."""
        if handler is None:
            return None
        return cls(handler, asker=asker_of(session_name), tool=tool, file=file)

    def question(self, prompt: str, password: bool) -> Question:
        return Question(clean_text(prompt), password, self.asker, self.tool, self.file)

    async def __call__(self, prompt: str, password: bool) -> str | None:
        if self.declined >= DECLINES_BEFORE_EOF:
            self.unasked += 1
            return None
        answer = await self.handler(self.question(prompt, password))
        if answer is None:
            self.declined += 1
        return answer

    def notes(self) -> list[str]:
        """What the reply should say about the run's questions."""
        if self.declined < DECLINES_BEFORE_EOF:
            return []
        later = (
            f"its {self.unasked} later input() call(s) raised EOFError without asking"
            if self.unasked
            else "any later input() in this run would have raised EOFError without asking"
        )
        return [f"The person declined {self.declined} questions of this run, so {later}."]


def asker_of(session_name: str | None) -> str:
    """Who asks, in a question's words: the session by its name (its id when unnamed)."""
    return f"session {session_name!r}" if session_name is not None else "a fresh run"
