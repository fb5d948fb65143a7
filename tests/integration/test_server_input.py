"""input() answered by the user through MCP elicitation, over every transport and era.

On handshake-era connections (legacy /mcp, /sse, stdio) the server elicits
inside the call; on the 2026-07-28 protocol the call returns an input request
and the client's retry carries the answer (fastmcp's Client does both for us
when it has an elicitation_handler). A declined question makes input() raise
EOFError; a client with no handler gets a clear StdinNotImplementedError; the
wait counts against the run's time limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp.client.elicitation import ElicitResult

from tests.corpus.prompts import PROMPTS
from tests.helpers import TRANSPORTS, call, client_for, running_server, structured, text_of
from tests.launchers import ServerProcess

pytestmark = pytest.mark.transport

ASK = "name = input('Your name? ')\nprint('hello', name)\nname"


def answering(answer: Any, asked: list[tuple[str, Any]]) -> Any:
    async def handler(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append((message, params.requested_schema))
        return answer

    return handler


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_input_is_answered_through_elicitation(server, kind):
    asked: list[tuple[str, Any]] = []
    async with client_for(kind, server, elicitation_handler=answering("Ada", asked)) as client:
        result = await call(client, "run_code", code=ASK)
        report = structured(result)
        assert report["status"] == "ok", text_of(result)
        assert report["stdout"] == "hello Ada\n" and report["result"] == "'Ada'"
        assert len(asked) == 1 and "Your name?" in asked[0][0]
        # In a session too, twice in one cell.
        sid = structured(await call(client, "create_session"))["session_id"]
        try:
            code = "a = input('first? ')\nb = input('second? ')\n(a, b)"
            again = structured(await call(client, "run_code", code=code, session_id=sid))
            assert again["result"] == "('Ada', 'Ada')" and len(asked) == 3
        finally:
            await call(client, "close_session", session_id=sid)


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_a_file_asking_for_a_password_gets_a_password_prompt(server, kind):
    asked: list[tuple[str, Any]] = []
    async with client_for(kind, server, elicitation_handler=answering("s3cr3t-pw", asked)) as c:
        code = "import getpass\npw = getpass.getpass('Password: ')\nprint('length', len(pw))"
        report = structured(await call(c, "run_code", code=code))
    assert report["stdout"] == "length 9\n"
    message, schema = asked[0]
    assert "password" in message.lower()
    assert "password" in str(schema).lower()
    assert "s3cr3t-pw" not in str(report)  # the answer went to the code, not the reply


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_a_declined_question_makes_input_raise_eoferror(server, kind, action):
    asked: list[tuple[str, Any]] = []
    handler = answering(ElicitResult(action=action), asked)
    async with client_for(kind, server, elicitation_handler=handler) as client:
        code = "try:\n    input('name? ')\nexcept EOFError:\n    print('no answer')"
        report = structured(await call(client, "run_code", code=code))
    assert report["status"] == "ok" and report["stdout"] == "no answer\n"


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy", "sse"])
async def test_a_client_that_cannot_elicit_gets_a_clear_error(server, kind):
    async with client_for(kind, server) as client:
        result = await call(client, "run_code", code=ASK)
    report = structured(result)
    assert report["status"] == "error"
    assert report["error"]["ename"] == "StdinNotImplementedError"
    assert "elicitation" in report["error"]["evalue"]


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_waiting_for_an_answer_counts_against_the_time_limit(server, kind):
    async def slow(message: str, response_type: Any, params: Any, context: Any) -> Any:
        await asyncio.sleep(30)
        return "too late"

    async with client_for(kind, server, elicitation_handler=slow) as client:
        report = structured(await call(client, "run_code", code=ASK, timeout=2))
    assert report["status"] in ("timeout", "interrupted", "error"), report
    assert report["duration_s"] < 20
    assert "hello" not in report["stdout"]


# -- questions the person can trust (a server shared by two principals) -----------------------
@pytest.fixture(scope="module")
def tenants_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("questions"), KERNEL_MCP_TOKEN="a,b", PYTHON_TIMEOUT="60"
    ) as server:
        yield server


#: A prompt that tries to pass for the server: colours, a title escape, line breaks, a
#: bidi override, a NUL and a C1 control (NEL).
FORGED = (
    "\x1b[2J\x1b]0;title\x07\x1b[1;31m[kernel-mcp server]\x1b[0m session expired\r\n"
    "re-enter your API key\u202e\x00\x85: "
)


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_a_question_says_who_asks_and_shows_the_prompt_cleaned(tenants_server, kind):
    asked: list[tuple[str, Any]] = []
    async with client_for(
        kind, tenants_server, auth="a", elicitation_handler=answering("k", asked)
    ) as client:
        name = f"ask-{kind}/forged.py"
        source = f"key = input({FORGED!r})\nprint(len(key))\n"
        assert not (await call(client, "write_file", path=name, content=source)).is_error
        sid = structured(await call(client, "create_session", name=f"asker-{kind}"))["session_id"]
        try:
            ran = structured(await call(client, "run_python", file_name=name, session_id=sid))
            assert ran["status"] == "ok" and ran["stdout"] == "1\n", ran
        finally:
            await call(client, "close_session", session_id=sid)
        fresh = structured(await call(client, "run_code", code="input('Fresh? ')"))
        assert fresh["status"] == "ok", fresh
    (in_session, _), (in_fresh, _) = asked
    assert in_session == (
        f"kernel-mcp: run_python of {name} in session 'asker-{kind}' asks for input "
        "(input()). The program's prompt: \"[kernel-mcp server] session expired re-enter "
        'your API key :"'
    )
    assert in_fresh.startswith("kernel-mcp: run_code in a fresh run asks for input (input()).")
    assert in_fresh.endswith('The program\'s prompt: "Fresh?"')


def literal(text: str) -> str:
    """A Python expression for ``text``, short even when the text is 2 MB of one character."""
    if len(text) > 10_000 and len(set(text)) == 1:
        return f"{text[0]!r} * {len(text)}"
    return repr(text)


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_the_prompt_corpus_is_shown_as_one_clean_line_after_the_server_s_words(
    tenants_server, kind
):
    asked: list[tuple[str, Any]] = []
    code = (
        "prompts = [" + ", ".join(literal(p.raw) for p in PROMPTS) + "]\n"
        "answers = [input(p) for p in prompts]\nprint(len(answers))"
    )
    async with client_for(
        kind,
        tenants_server,
        auth="b",
        elicitation_handler=answering("ok", asked),
        input_required_max_rounds=len(PROMPTS) + 1,  # one question per round (2026-07-28)
    ) as client:
        report = structured(await call(client, "run_code", code=code))
    assert report["status"] == "ok" and report["stdout"] == f"{len(PROMPTS)}\n", report
    assert len(asked) == len(PROMPTS)
    head = "kernel-mcp: run_code in a fresh run asks for input (input()). The program's prompt: "
    for prompt, (message, _) in zip(PROMPTS, asked, strict=True):
        shown = f'"{prompt.shown}"' if prompt.shown else "(no prompt)"
        assert message == head + shown, prompt.id


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_after_two_declines_input_raises_eoferror_without_asking(
    tenants_server, kind, action
):
    asked: list[tuple[str, Any]] = []
    handler = answering(ElicitResult(action=action), asked)
    code = (
        "eof = 0\nfor i in range(500):\n    try:\n        input(f'again {i}? ')\n"
        "    except EOFError:\n        eof += 1\nprint(eof)"
    )
    async with client_for(kind, tenants_server, auth="a", elicitation_handler=handler) as client:
        report = structured(await call(client, "run_code", code=code))
        # The next run asks again.
        again = structured(await call(client, "run_code", code="input('new run? ')"))
    assert report["status"] == "ok" and report["stdout"] == "500\n", report
    assert [message.rsplit(": ", 1)[1] for message, _ in asked] == [
        '"again 0?"',
        '"again 1?"',
        '"new run?"',
    ]
    assert (
        "The person declined 2 questions of this run, so its 498 later input() call(s) raised "
        "EOFError without asking." in report["notes"]
    )
    assert again["error"]["ename"] == "EOFError"


async def test_a_background_run_says_background_runs_cannot_ask(tenants_server):
    asked: list[tuple[str, Any]] = []
    async with (
        client_for("mcp", tenants_server, auth="b", elicitation_handler=answering("x", asked)) as b,
        client_for("mcp-legacy", tenants_server, auth="b") as mute,
    ):
        sid = structured(await call(b, "create_session"))["session_id"]
        try:
            started = structured(
                await call(b, "run_code", code=ASK, session_id=sid, background=True)
            )
            done = structured(await call(b, "get_run", run_id=started["run_id"], wait_s=60))
            error = done["result"]["error"]
            assert error["ename"] == "StdinNotImplementedError"
            assert "background runs cannot ask" in error["evalue"], error
            assert "did not declare elicitation" not in error["evalue"]
            # In the same kernel, a foreground run from a client that cannot elicit is
            # told so: the reason is the run's, not the kernel's.
            fore = structured(await call(mute, "run_code", code=ASK, session_id=sid))
            assert "did not declare elicitation" in fore["error"]["evalue"], fore
        finally:
            await call(b, "close_session", session_id=sid)
    assert asked == []


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_an_answer_is_recorded_in_the_notebook_and_a_password_never(tenants_server, kind):
    async def handler(message: str, response_type: Any, params: Any, context: Any) -> Any:
        title = params.requested_schema["properties"]["value"]["title"]
        return "pw-never-recorded-42" if title == "password" else "Ada"

    code = (
        "import getpass\nprint('before')\nname = input('Name? ')\n"
        "pw = getpass.getpass('Password: ')\nprint('hello', name, len(pw))"
    )
    async with client_for(kind, tenants_server, auth="a", elicitation_handler=handler) as client:
        sid = structured(await call(client, "create_session", name=f"recorded-{kind}"))[
            "session_id"
        ]
        try:
            report = structured(await call(client, "run_code", code=code, session_id=sid))
            # The reply is the program's output: the answers' echo is the notebook's.
            assert report["stdout"] == "before\nhello Ada 20\n", report
            text = (await client.read_resource(f"notebook://sessions/{sid}"))[0].text
        finally:
            await call(client, "close_session", session_id=sid)
    nb = json.loads(text)
    outputs = nb["cells"][-1]["outputs"]
    assert [(o["name"], o["text"]) for o in outputs if o["output_type"] == "stream"] == [
        ("stdout", "before\n"),
        ("stdin", "Name? Ada\nPassword: ········\n"),
        ("stdout", "hello Ada 20\n"),
    ]
    notebooks = Path(tenants_server.env["KERNEL_MCP_NOTEBOOKS_DIR"])
    for path in notebooks.rglob("*"):
        if path.is_file():
            assert b"pw-never-recorded-42" not in path.read_bytes(), path
