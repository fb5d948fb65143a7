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

Each sample waits for the previous one to be shown, so that none queues behind another.
``python -m bench.watch_cases [--quick]`` runs it alone and prints its figures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.harness import Bench, summary
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


def case_w(bench: Bench) -> dict[str, Any]:
    """A published cell, and a stream chunk, to the watcher's page (see the module)."""
    return asyncio.run(measure(bench.n(200, 20)))


if __name__ == "__main__":
    figures = asyncio.run(measure(20 if "--quick" in sys.argv else 200))
    print(json.dumps(figures, indent=1))
