"""Case (w): how soon a watcher's page shows what a session does.

The /watch routes of ``kernel_mcp.watch`` are served by uvicorn in this process, over
feeds this case publishes into (the test suite's ``tests/watch_site.py``), to a page in
Debian's headless chromium (playwright, ``/usr/bin/chromium``). A MutationObserver,
installed in the page through the DevTools protocol (the page's CSP does not apply
to it), stamps the moment the awaited cell is in the DOM with
``performance.timeOrigin + performance.now()``, and again at the next animation
frame (when it is painted); the publisher stamps with ``time.time()``: both are the
machine's wall clock.

* **cell**: a whole cell published as a run's reply publishes it (``cell_started``,
  then ``cell_finished`` with its outputs), to the finished cell in the page. The
  target is p50 <= 100 ms.
* **stream**: one chunk of a running cell's stdout, to its text in the page.
* **server**: end to end on a real ``kernel-mcp serve``: ``run_code`` in a session, the
  page opened from ``view_session``'s link; from the moment the client has the run's
  reply to its cell in the page (negative: the page showed it first, since the runner
  publishes a cell before it records it and replies), and from the call to the page.
  This is the issue's figure (target p50 <= 100 ms).

Each sample waits for the previous one to be shown, so that none queues behind another.
``python -m bench.watch_cases [--quick]`` runs it alone and prints its figures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.harness import Bench, client, create_session, mcp_url, summary, wait_quiet
from tests.launchers import ServerProcess
from tests.watch_site import Site, chromium, serving, stream

__all__ = ["case_w", "measure"]

OBSERVER = """() => {
  window.__stamps = [];
  window.__expect = null;
  const now = () => performance.timeOrigin + performance.now();
  new MutationObserver(() => {
    const want = window.__expect;
    if (want === null || !want.test()) return;
    window.__expect = null;
    const dom = now();
    requestAnimationFrame(() => window.__stamps.push([want.id, dom, now()]));
  }).observe(document.getElementById("cells"),
             {subtree: true, childList: true, attributes: true, characterData: true});
}"""
EXPECT_CELL = """n => { window.__expect = {id: n, test: () =>
  document.querySelector('[data-cell="' + n + '"][data-status="ok"]') !== null}; }"""
EXPECT_TEXT = """([n, text]) => { window.__expect = {id: n, test: () => {
  const cell = document.querySelector('[data-cell="1"] .outputs');
  return cell !== null && cell.textContent.includes(text); }}; }"""


async def _sample(page: Any, publish: Any, number: int) -> tuple[float, float]:
    """(to the DOM, to the next frame), seconds, of one publication."""
    sent = time.time()
    publish()
    await page.wait_for_function("n => window.__stamps.length >= n", arg=number)
    _, dom, frame = (await page.evaluate("window.__stamps"))[number - 1]
    return dom / 1000 - sent, frame / 1000 - sent


async def measure(n: int) -> dict[str, Any]:
    """``n`` cells, then ``n`` stream chunks, each shown before the next is published."""
    site = Site()
    async with serving(site), chromium() as browser:
        feed = site.session("benchW", name="bench")
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(site.view_url("benchW"))
            await page.wait_for_selector("#link[data-link='on']")
            await page.evaluate(OBSERVER)
            cells: list[tuple[float, float]] = []
            outputs = [stream("stdout", "done\n")]
            for i in range(1, n + 1):
                await page.evaluate(EXPECT_CELL, i)

                def publish(i: int = i) -> None:
                    feed.cell_started(f"step({i})", tool="run_code")
                    feed.cell_finished(status="ok", outputs=outputs, execution_count=i)

                cells.append(await _sample(page, publish, i))
            await page.evaluate("() => { window.__stamps = []; }")
            # A running cell of its own, so that the chunks land in cell 1 of a new feed.
            site.feeds.close("benchW")
            feed = site.session("benchW2", name="bench")
            await page.goto(site.view_url("benchW2"))
            await page.wait_for_selector("#link[data-link='on']")
            await page.evaluate(OBSERVER)
            feed.cell_started("loop()", tool="run_code")
            await page.wait_for_selector('[data-cell="1"]')
            chunks: list[tuple[float, float]] = []
            for i in range(1, n + 1):
                text = f"chunk {i}\n"
                await page.evaluate(EXPECT_TEXT, [i, text])
                chunks.append(await _sample(page, lambda t=text: feed.stream("stdout", t), i))
        finally:
            await context.close()
    return {
        "w_cell_dom": summary([dom for dom, _ in cells]),
        "w_cell_painted": summary([frame for _, frame in cells]),
        "w_stream_dom": summary([dom for dom, _ in chunks]),
        "w_stream_painted": summary([frame for _, frame in chunks]),
    }


async def measure_server(server: ServerProcess, n: int) -> dict[str, Any]:
    """``n`` run_code calls in one session of ``server``, each to its cell in the page
    opened from view_session's link; each shown before the next call."""
    async with client(mcp_url(server)) as c, chromium() as browser:
        sid = await create_session(c, "bench-w")
        view = await c.call_tool_mcp("view_session", {"session_id": sid})
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(view.structured_content["url"])
            await page.wait_for_selector("#link[data-link='on']")
            await page.evaluate(OBSERVER)
            await wait_quiet(server.pid, 2, timeout=60)  # the session's, and the pool's
            after_reply: list[float] = []
            after_call: list[float] = []
            calls: list[float] = []
            for i in range(1, n + 1):
                await page.evaluate(EXPECT_CELL, i)
                sent = time.time()
                reply = await c.call_tool_mcp("run_code", {"code": f"{i}", "session_id": sid})
                replied = time.time()
                if reply.is_error:
                    raise RuntimeError(f"run_code failed: {reply.content}")
                await page.wait_for_function("n => window.__stamps.length >= n", arg=i)
                _, dom, _ = (await page.evaluate("window.__stamps"))[i - 1]
                after_reply.append(dom / 1000 - replied)
                after_call.append(dom / 1000 - sent)
                calls.append(replied - sent)
        finally:
            await context.close()
            await c.call_tool_mcp("close_session", {"session_id": sid})
    return {
        "w_reply_to_page": summary(after_reply),
        "w_call_to_page": summary(after_call),
        "w_call_to_reply": summary(calls),
    }


def case_w(bench: Bench) -> dict[str, Any]:
    """A run's reply to its cell on the watcher's page, end to end; then a published cell
    and a stream chunk alone (see the module)."""
    n = bench.n(200, 20)
    figures = bench.on_server(
        "kernel-mcp-w",
        "(w) run_code in a session, to its cell on view_session's page…",
        lambda server: measure_server(server, n),
        pool_size=1,
    )
    print("(w) published cells and stream chunks, to the page…", flush=True)
    return {**figures, **asyncio.run(measure(n))}


if __name__ == "__main__":
    figures = asyncio.run(measure(20 if "--quick" in sys.argv else 200))
    print(json.dumps(figures, indent=1))
