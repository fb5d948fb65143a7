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
from typing import Any

import pytest
from fastmcp.client.elicitation import ElicitResult

from tests.helpers import TRANSPORTS, call, client_for, structured, text_of

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
