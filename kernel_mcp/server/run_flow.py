"""How a run tool call becomes a run: foreground, background, or parked on input().

* ``background=true``: the run starts in the run registry and the call replies
  at once with its ``run_id`` (``get_run`` follows it).
* Foreground, on a handshake-era connection whose client can elicit: the code's
  ``input()`` becomes ``ctx.elicit`` inside the same call.
* Foreground, on a 2026-07-28 connection whose client can elicit: there is no
  back-channel, so the run is parked in the run registry and the call returns an
  ``InputRequiredResult``; the client asks the user and calls the tool again with
  the answer and the (sealed) ``request_state``, which names the run. The retried
  call delivers the answer and waits on.
* Otherwise ``input()`` raises at once (StdinNotImplementedError, with a message
  that says why: the client cannot elicit, or background runs cannot ask).

Each question's text is ``kernel_mcp.runner.questions.Question.message``: who asks (the
session, or a fresh run), through which tool and file, then the program's prompt,
cleaned and cut. A declined or cancelled elicitation makes ``input()`` raise
EOFError in the kernel; after two in one run, it raises without asking.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import mcp_types
from fastmcp import Context
from fastmcp.server.elicitation import AcceptedElicitation
from fastmcp.tools import ToolResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from kernel_mcp.errors import InvalidArgument, RunFailed
from kernel_mcp.kernels.setup import NO_STDIN_BACKGROUND
from kernel_mcp.runner import Runner
from kernel_mcp.runner.questions import Question, QuestionHandler
from kernel_mcp.runner.requests import NotebookOutcome, NotebookRequest, RunOutcome, RunRequest
from kernel_mcp.runner.runs import Run
from kernel_mcp.server.auth import owner
from kernel_mcp.server.views import RunStatus, RunView

__all__ = ["INPUT_KEY", "accepts_input", "final", "run_call", "run_view", "started"]

#: The key of the one input request a parked run asks at a time.
INPUT_KEY = "input"
_ELICIT = mcp_types.ClientCapabilities(elicitation=mcp_types.ElicitationCapability())

Reply = Callable[[Any], ToolResult]


def accepts_input(ctx: Context | None) -> str | None:
    """How this call can ask the user for input: "elicit", "retry", or None."""
    if ctx is None:
        return None
    try:
        if not ctx.session.check_client_capability(_ELICIT):
            return None
        if ctx.is_background_task:
            return "retry"  # an MCP task asks with the guard pattern (tasks/update answers)
        context = ctx.request_context
    except (RuntimeError, AttributeError):
        return None
    modern = context is not None and context.protocol_version in MODERN_PROTOCOL_VERSIONS
    return "retry" if modern else "elicit"


def _answer_schema(password: bool) -> tuple[str, str]:
    """The title and description of the one field the person fills in."""
    if password:
        return "password", "A password: it goes to the code and is not shown or recorded."
    return "answer", "The text input() returns (recorded in the session's notebook)."


def _eliciting(ctx: Context) -> QuestionHandler:
    async def ask(question: Question) -> str | None:
        title, description = _answer_schema(question.password)
        result = await ctx.elicit(
            question.message,
            str,
            response_title=title,
            response_description=description,
        )
        return str(result.data) if isinstance(result, AcceptedElicitation) else None

    return ask


def _input_required(run: Run) -> mcp_types.InputRequiredResult:
    pending = run.pending_input
    assert pending is not None
    title, description = _answer_schema(pending.password)
    schema = {
        "type": "object",
        "properties": {"value": {"type": "string", "title": title, "description": description}},
        "required": ["value"],
    }
    request = mcp_types.ElicitRequest(
        method="elicitation/create",
        params=mcp_types.ElicitRequestFormParams(
            message=pending.question.message, requested_schema=schema
        ),
    )
    state = json.dumps({"run": run.id, "input": pending.id})
    return mcp_types.InputRequiredResult(input_requests={INPUT_KEY: request}, request_state=state)


def _answer(run: Run, ctx: Context) -> None:
    """Deliver the client's answer to the input the run waits for."""
    pending = run.pending_input
    responses = ctx.input_responses or {}
    if pending is None or pending.answer.done():
        return
    try:
        expected = json.loads(ctx.request_state or "{}").get("input")
    except ValueError:
        expected = None
    if expected != pending.id:
        return  # an answer to an earlier question: ask again
    response = responses.get(INPUT_KEY)
    value: str | None = None
    if isinstance(response, mcp_types.ElicitResult) and response.action == "accept":
        content = response.content or {}
        value = str(content.get("value", "")) if isinstance(content, dict) else None
    pending.answer.set_result(value)


async def run_call(
    ctx: Context | None,
    runner: Runner,
    request: RunRequest | NotebookRequest,
    reply: Reply,
    *,
    started_report: Callable[[Run], BaseModel],
) -> ToolResult | mcp_types.InputRequiredResult:
    """Run ``request`` the way this call allows (see the module docstring).

    ``reply`` renders a finished run's outcome; ``started_report`` is the tool's
    structured content for a run it started in the background (status "running").
    """
    if request.background:
        # Nobody waits on this call to pass a question on: input() says so.
        request = replace(request, no_input=NO_STDIN_BACKGROUND)
        return started(runner.start_run(request), started_report)
    if ctx is not None and ctx.is_background_task:
        # An MCP task (io.modelcontextprotocol/tasks): a background run whose reply the
        # task delivers, progress and all; tasks/cancel cancels it.
        request = replace(request, background=True)
    resumed = _resumed_run(ctx, runner)
    if resumed is not None:
        assert ctx is not None
        _answer(resumed, ctx)
        return await _until_done_or_asked(runner, resumed, reply)
    mode = accepts_input(ctx)
    if mode == "retry" or request.background:
        run = runner.start_run(request, parked=mode == "retry")
        return await _until_done_or_asked(runner, run, reply)
    hooked = request
    if mode == "elicit":
        assert ctx is not None
        hooked = replace(request, stdin=_eliciting(ctx))
    if isinstance(hooked, NotebookRequest):
        return reply(await runner.run_notebook_request(hooked))
    return reply(await runner.run(hooked))


def _resumed_run(ctx: Context | None, runner: Runner) -> Run | None:
    if ctx is None or not ctx.request_state:
        return None
    try:
        run_id = json.loads(ctx.request_state)["run"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("request_state does not name a run of this server") from None
    return runner.runs.get(owner(), str(run_id))


async def _until_done_or_asked(
    runner: Runner, run: Run, reply: Reply
) -> ToolResult | mcp_types.InputRequiredResult:
    """Wait for the parked run: its reply when done, or the next input request."""
    try:
        while not run.done:
            pending = run.pending_input
            if pending is not None and not pending.answer.done():
                return _input_required(run)
            await run.changed(60.0)
    except BaseException:
        # The caller went away (a cancel): the run is interrupted, as any foreground run.
        await runner.runs.cancel(run)
        raise
    runner.runs.forget(run)
    return final(run, reply)


def final(run: Run, reply: Reply) -> ToolResult:
    """A finished run's reply, as its tool gives it.

    Raises:
        RunFailed: the run could not run (its failure says why), or was cancelled.
    """
    if run.failure is not None:
        raise RunFailed(run.failure)
    if run.outcome is None:
        raise RunFailed(f"Run {run.id} was cancelled.")
    return reply(run.outcome)


def started(run: Run, report: Callable[[Run], BaseModel]) -> ToolResult:
    """The reply of a call that started ``run`` in the background."""
    return ToolResult(
        content=[
            mcp_types.TextContent(
                type="text",
                text=(
                    f"status: running · {run.label} · run {run.id}\n"
                    "Started in the background. Call get_run(run_id, wait_s=…, since=next) "
                    "for its output as it comes and its reply once done; cancel_run stops it."
                ),
            )
        ],
        structured_content=report(run).model_dump(mode="json"),
    )


def run_view(
    run: Run,
    *,
    since: int = 0,
    output_limit: int,
    result: Any = None,
    notes: list[str] | None = None,
) -> RunView:
    """What get_run shows of ``run`` (``result`` is its rendered report, once done)."""
    text, next_offset, missed = run.log.read(since, output_limit)
    status = cast(RunStatus, run.state)
    outcome = run.outcome
    if isinstance(outcome, NotebookOutcome):
        status = outcome.run.status
    elif isinstance(outcome, RunOutcome):
        status = outcome.execution.status
    view_notes = list(notes or [])
    if run.failure is not None:
        view_notes.append(f"The run could not run: {run.failure}")
    if missed:
        view_notes.append(
            f"{missed} characters of output were trimmed before you read them "
            "(a run keeps its last 4 MiB of text)."
        )
    return RunView(
        run_id=run.id,
        status=status,
        done=run.done,
        tool=run.tool,
        label=run.label,
        session_id=run.session_id,
        background=run.background,
        started_at=run.started_at,
        ended_at=run.ended_at,
        elapsed_s=run.elapsed_s,
        output=text,
        next=next_offset,
        missed=missed,
        input_prompt=run.pending_input.prompt if run.pending_input is not None else None,
        result=result,
        notes=view_notes,
    )
