"""The session viewer in a real headless Chromium: live cells, output that stays inert, access.

Each test gets a fresh server (``tests/watch_site.py``) whose feeds it publishes into, as
the runner does, and a fresh browser profile (a playwright context) that records every
request and refuses any that leaves the server's origin. The XSS payloads report back to
``/pwned/...`` on the server and through ``alert()``; a sentinel request made by the
test itself proves that such a report would be seen.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kernel_mcp.watch.feed import FeedLimits, SessionFeed
from tests.watch_site import Site, cell, chromium, display, error, host_result, serving, stream

pytestmark = pytest.mark.browser

SID = "W4tch_the_session"


def png(width: int, height: int) -> str:
    """A real PNG (red pixels), base64."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(raw).decode()


@dataclass
class Watcher:
    """A person's browser profile: one page, and everything it asked for."""

    site: Site
    context: Any
    page: Any
    requests: list[str] = field(default_factory=list)
    """Requests that got an answer (one the page's CSP blocked never leaves the browser)."""
    refused: list[str] = field(default_factory=list)
    """Requests for another origin: each was stopped on its way out, and kept here."""
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)

    async def open(self, session_id: str = SID, principal: str | None = None) -> None:
        await self.page.goto(self.site.view_url(session_id, principal))
        await self.page.wait_for_selector("#link[data-link='on']")

    async def cell(self, number: int, status: str = "ok") -> Any:
        return await self.page.wait_for_selector(f'[data-cell="{number}"][data-status="{status}"]')

    def foreign(self) -> list[str]:
        """Requests for anything but the server's own origin."""
        own = (self.site.origin + "/", "data:", "about:")
        return self.refused + [url for url in self.requests if not url.startswith(own)]

    async def settle(self) -> None:
        """Every frame loaded, then a report of our own: once the server has it, a
        payload's report made before would have been seen too."""
        for frame in self.page.frames:
            await frame.wait_for_load_state("load")
        await self.page.evaluate("fetch('/pwned/zz-sentinel')")
        sentinel = self.site.origin + "/pwned/zz-sentinel"
        for _ in range(2000):
            if "/pwned/zz-sentinel" in self.site.pwned and sentinel in self.requests:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the sentinel report was not seen")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with serving(Site()) as served:
        yield served


async def new_watcher(browser: Any, site: Site, *, allow: tuple[str, ...] = ()) -> Watcher:
    context = await browser.new_context()
    watcher = Watcher(site, context, None)
    context.on("requestfinished", lambda request: watcher.requests.append(request.url))
    allowed = (site.origin + "/", *allow)

    async def refuse(route: Any) -> None:
        watcher.refused.append(route.request.url)
        await route.abort()

    await context.route(lambda url: not url.startswith(allowed), refuse)
    watcher.page = await context.new_page()

    def on_dialog(dialog: Any) -> None:
        watcher.dialogs.append(dialog.message)
        watcher.pending.append(asyncio.ensure_future(dialog.dismiss()))

    watcher.page.on("dialog", on_dialog)
    watcher.page.on("pageerror", lambda exc: watcher.errors.append(str(exc)))
    return watcher


@pytest.fixture
async def watcher(browser: Any, site: Site) -> AsyncIterator[Watcher]:
    made = await new_watcher(browser, site)
    try:
        yield made
    finally:
        await made.context.close()


async def text_of(handle: Any) -> str:
    return await handle.inner_text()


# -- live --------------------------------------------------------------------------------
async def test_cells_appear_live_as_the_session_runs_them(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID, name="analysis")
    await watcher.open()
    assert await watcher.page.inner_text("#title") == "analysis"
    assert await watcher.page.is_visible("#empty")
    for i in range(1, 4):
        cell(feed, f"x = {i}\nx * 2", [display({"text/plain": str(2 * i)})], count=i)
        shown = await watcher.cell(i)
        assert f"In [{i}]:" in await text_of(shown)
        assert f"x = {i}" in await text_of(shown)
    assert not await watcher.page.is_visible("#empty")
    assert await watcher.page.get_attribute("#state", "data-state") == "idle"
    assert watcher.errors == [] and watcher.foreign() == []


async def test_a_running_cells_output_streams_in_before_it_finishes(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID)
    await watcher.open()
    feed.cell_started("for step in range(3): work(step)", tool="run_code")
    running = await watcher.cell(1, "running")
    assert await watcher.page.get_attribute("#state", "data-state") == "busy"
    assert "In [*]:" in await text_of(running)
    outputs = await running.query_selector(".outputs")
    for step in range(3):
        feed.stream("stdout", f"step {step}\n")
        await watcher.page.wait_for_function(
            "([el, text]) => el.textContent.includes(text)", arg=[outputs, f"step {step}"]
        )
    feed.stream("stderr", "a warning\n")
    await watcher.page.wait_for_selector('[data-cell="1"] .stderr')
    # A progress bar rewrites its line.
    feed.stream("stdout", "10%\r")
    feed.stream("stdout", "55%\r")
    await watcher.page.wait_for_function(
        """() => {
            const shown = document.querySelectorAll('[data-cell="1"] .stdout');
            return shown.length === 2 && shown[1].textContent === '55%';
        }"""
    )
    feed.cell_finished(
        status="ok",
        outputs=[stream("stdout", "step 0\nstep 1\nstep 2\n")],
        execution_count=4,
        duration_s=1.5,
    )
    done = await watcher.cell(1, "ok")
    assert "In [4]:" in await text_of(done) and "1.500 s" in await text_of(done)
    assert await watcher.page.get_attribute("#state", "data-state") == "idle"


async def test_a_page_opened_late_shows_the_cells_so_far_and_the_one_running(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID)
    cell(feed, "a = 1", [], count=1)
    cell(feed, "b = 2", [], count=2)
    feed.cell_started("slow()", tool="run_python", label="etl/slow.py")
    feed.stream("stdout", "half way\n")
    await watcher.open()
    await watcher.cell(2)
    running = await watcher.cell(3, "running")
    assert "half way" in await text_of(running)
    assert "etl/slow.py" in await text_of(running)


async def test_an_image_is_shown_from_its_own_data(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID)
    await watcher.open()
    cell(feed, "plot()", [display({"image/png": png(3, 2), "text/plain": "<Figure>"})])
    image = await watcher.page.wait_for_selector('[data-cell="1"] img')
    await watcher.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image)
    assert await image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [3, 2]
    assert (await image.get_attribute("src") or "").startswith("data:image/png;base64,")
    assert watcher.foreign() == []


async def test_html_and_svg_render_in_frames_without_scripts_or_the_pages_origin(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID)
    await watcher.open()
    table = "<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>42</td></tr></tbody></table>"
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">'
        '<rect width="40" height="30"/></svg>'
    )
    cell(
        feed,
        "df",
        [display({"text/html": table, "text/plain": "df"}), display({"image/svg+xml": svg})],
    )
    await watcher.cell(1)
    frames = await watcher.page.query_selector_all('[data-cell="1"] iframe')
    assert len(frames) == 2
    for handle in frames:
        assert await handle.get_attribute("sandbox") == ""
        inner = await handle.content_frame()
        await inner.wait_for_load_state("load")
    html_frame, svg_frame = [await handle.content_frame() for handle in frames]
    assert await html_frame.inner_text("td") == "42"
    assert await svg_frame.query_selector("rect") is not None
    # The frame's own style sheet comes from the server, nothing else does.
    assert await html_frame.eval_on_selector("th", "th => getComputedStyle(th).fontWeight") == "600"
    # An opaque origin: no cookie to read, and the page is out of reach.
    assert "SecurityError" in await html_frame.evaluate(
        "() => { try { return document.cookie } catch (e) { return e.name } }"
    )
    assert (
        await html_frame.evaluate(
            "() => { try { return String(parent.document.title) } catch (e) { return e.name } }"
        )
        == "SecurityError"
    )
    assert watcher.foreign() == []


# -- untrusted output ---------------------------------------------------------------------
def payload(tag: str) -> str:
    """Markup that tries every way to run script, load, navigate or report, labelled."""
    return (
        f"<script>fetch('/pwned/{tag}-script');alert('{tag}')</script>"
        f"<img src=x onerror=\"fetch('/pwned/{tag}-onerror');alert('{tag}')\">"
        f"<a id=js href=\"javascript:fetch('/pwned/{tag}-link')\">click</a>"
        f"<script>new Image().src='/pwned/{tag}-cookie?'+document.cookie</script>"
        f"<script>fetch(location.origin+'/pwned/{tag}-origin')</script>"
        f'<iframe src="/pwned/{tag}-iframe"></iframe><img src="/pwned/{tag}-img">'
        f'<link rel=stylesheet href="/pwned/{tag}-css"><object data="/pwned/{tag}-object"></object>'
        f"<style>@import url('/pwned/{tag}-import');"
        f"body {{ background: url('/pwned/{tag}-bg') }}</style>"
        f'<form action="/pwned/{tag}-form"><input id=go type=submit></form>'
        f'<img src="https://example.invalid/pwned/{tag}-away">'
        f'<meta http-equiv="refresh" content="0;url=/pwned/{tag}-refresh">'
    )


SVG_PAYLOAD = (
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
    'onload="fetch(\'/pwned/svg-onload\')" width="100" height="50">'
    "<script>fetch('/pwned/svg-script');alert('svg')</script>"
    '<a xlink:href="javascript:fetch(\'/pwned/svg-link\')"><text y="20">click</text></a>'
    '<image href="/pwned/svg-image" width="10" height="10"/>'
    '<animate attributeName="x" onbegin="fetch(\'/pwned/svg-animate\')" dur="1s"/>'
    f'<foreignObject width="100" height="50">{payload("svg-foreign")}</foreignObject></svg>'
)


def publish_payload(feed: SessionFeed, kind: str) -> str:
    """One cell whose ``kind`` of output carries the payload; the text it should show."""
    text = payload(kind)
    if kind in ("stdout", "stderr"):
        outputs = [stream(kind, text)]
    elif kind == "html":
        outputs, text = [display({"text/html": text})], ""  # rendered, in its frame
    elif kind == "svg":
        outputs, text = [display({"image/svg+xml": SVG_PAYLOAD})], ""
    elif kind == "markdown":
        text = f"[click](javascript:fetch('/pwned/md-link')) ![x](/pwned/md-img) {text}"
        outputs = [display({"text/markdown": text})]
    elif kind == "plain":
        outputs = [display({"text/plain": text})]
    elif kind == "result":
        outputs = [
            {
                "output_type": "execute_result",
                "data": {"text/plain": text},
                "metadata": {},
                "execution_count": 1,
            }
        ]
    elif kind == "javascript":
        text = "fetch('/pwned/javascript');alert('javascript')"
        outputs = [display({"application/javascript": text})]
    elif kind == "traceback":
        outputs = [
            error("ValueError", text, ["\x1b[31m" + text + "\x1b[0m", f"ValueError: {text}"])
        ]
    elif kind == "image":
        outputs, text = (
            [display({"image/png": "x\" onerror=\"fetch('/pwned/png')", "text/plain": "fig"})],
            "fig",
        )
    elif kind == "source":
        feed.cell_started(text, tool="run_code")
        feed.cell_finished(status="ok", outputs=[], notes=[text])
        return text
    else:
        raise AssertionError(kind)
    cell(feed, "show()", outputs)
    return text


PAYLOAD_KINDS = [
    "stdout",
    "stderr",
    "html",
    "svg",
    "markdown",
    "plain",
    "result",
    "javascript",
    "traceback",
    "image",
    "source",
]


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
async def test_no_output_can_run_script_load_or_report_anything(
    site: Site, watcher: Watcher, kind: str
) -> None:
    feed = site.session(SID, name=payload("name"))
    await watcher.open()
    shown = publish_payload(feed, kind)
    await watcher.cell(1)
    # Click what looks clickable inside frames (a javascript: link, a form's button).
    for frame in watcher.page.frames[1:]:
        for selector in ("#js", "#go", "text=click"):
            if await frame.query_selector(selector):
                # Activation, whatever covers it; the sandbox lets it do nothing.
                await frame.dispatch_event(selector, "click")
    await watcher.settle()
    assert site.pwned == ["/pwned/zz-sentinel"]
    assert [u for u in watcher.requests if "/pwned/" in u] == [site.origin + "/pwned/zz-sentinel"]
    assert watcher.dialogs == [] and watcher.errors == []
    assert watcher.foreign() == []
    page = await watcher.page.inner_text("body")
    if shown:
        assert shown in page  # as text, exactly
    assert payload("name") == await watcher.page.inner_text("#title")
    # Nothing an output carried became an element of the page itself.
    leaked = await watcher.page.evaluate(
        """() => document.querySelectorAll(
            'body a, body script, body object, body form, body link, body meta,'
            + 'body img:not([src^="data:image/"]), body iframe:not([sandbox=""])').length"""
    )
    assert leaked == 0
    assert await watcher.page.evaluate("document.scripts.length") == 1


async def test_a_display_id_is_matched_as_a_string_never_as_a_selector(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID)
    await watcher.open()
    display_id = "\"]<img src=x onerror=alert(1)>[x='"
    feed.cell_started("bar()", tool="run_code")
    feed.output({**display({"text/plain": "10%"}), "transient": {"display_id": display_id}})
    await watcher.page.wait_for_selector('[data-cell="1"] .display')
    feed.output(
        {
            "output_type": "update_display_data",
            "data": {"text/plain": "90%"},
            "metadata": {},
            "transient": {"display_id": display_id},
        }
    )
    await watcher.page.wait_for_function(
        "() => document.querySelector('[data-cell=\"1\"] .outputs').textContent === '90%'"
    )
    assert watcher.errors == [] and watcher.dialogs == []


async def test_the_page_can_put_markup_nowhere_but_a_sandboxed_frame(
    site: Site, watcher: Watcher
) -> None:
    site.session(SID)
    await watcher.open()
    # Trusted Types: an HTML sink refuses plain strings in this page.
    refused = await watcher.page.evaluate(
        "() => { try { document.body.innerHTML = '<b>x</b>'; return 'allowed' }"
        " catch (e) { return e.name } }"
    )
    assert refused == "TypeError"
    # The grant cookie is HttpOnly: no script of the page's own can read it either.
    assert await watcher.page.evaluate("document.cookie") == ""
    cookies = await watcher.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("kmcp_watch", True, "Strict")
    ]


async def test_the_detector_sees_a_report_that_is_made(site: Site, watcher: Watcher) -> None:
    """The control for the XSS tests: a report made from the page does reach the server."""
    site.session(SID)
    await watcher.open()
    await watcher.page.evaluate("fetch('/pwned/control')")
    await watcher.settle()
    assert site.pwned == ["/pwned/control", "/pwned/zz-sentinel"]


# -- access -------------------------------------------------------------------------------
async def test_the_ticket_leaves_the_address_bar(site: Site, watcher: Watcher) -> None:
    site.session(SID)
    url = site.view_url(SID)
    await watcher.page.goto(url)
    assert watcher.page.url == f"{site.origin}/watch/{SID}"
    await watcher.page.wait_for_selector("#link[data-link='on']")
    history = await watcher.page.evaluate("location.href + ' ' + document.referrer")
    assert "ticket" not in history


async def test_a_used_ticket_shows_nothing(browser: Any, site: Site, watcher: Watcher) -> None:
    feed = site.session(SID)
    cell(feed, "secret = 42", [])
    url = site.view_url(SID)
    await watcher.page.goto(url)
    await watcher.cell(1)
    other = await new_watcher(browser, site)
    try:
        response = await other.page.goto(url)
        assert response.status == 403
        body = await other.page.inner_text("body")
        assert "secret" not in body and "cannot be used" in body
        # Nor does the page itself without a grant.
        await other.page.goto(f"{site.origin}/watch/{SID}")
        await other.page.wait_for_selector("#state[data-state='no access']")
        assert await other.page.query_selector("[data-cell]") is None
    finally:
        await other.context.close()


async def test_an_expired_ticket_shows_nothing(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID)
    cell(feed, "secret = 42", [])
    url = site.view_url(SID)
    site.clock.advance(61)
    response = await watcher.page.goto(url)
    assert response.status == 403
    assert "secret" not in await watcher.page.inner_text("body")
    assert await watcher.context.cookies() == []


async def test_another_principals_session_is_refused(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID, owner="ada")
    cell(feed, "ada_secret = 1", [])
    response = await watcher.page.goto(site.view_url(SID, "bob"))
    assert response.status == 403
    assert "ada_secret" not in await watcher.page.inner_text("body")
    await watcher.open(SID, "ada")
    await watcher.cell(1)


async def test_a_link_followed_from_another_site_opens_the_view(browser: Any, site: Site) -> None:
    """SameSite=Strict and a cross-site click: the page's own requests carry the grant."""
    feed = site.session(SID)
    cell(feed, "shown = True", [])
    site.link = site.view_url(SID)
    linker = f"http://localhost:{site.port}"
    person = await new_watcher(browser, site, allow=(linker + "/",))
    try:
        await person.page.goto(f"{linker}/linker")
        await person.page.click("#go")
        await person.page.wait_for_url(f"{site.origin}/watch/{SID}")
        await person.cell(1)
    finally:
        await person.context.close()


async def test_the_view_says_when_the_session_ends(site: Site, watcher: Watcher) -> None:
    site.session(SID)
    await watcher.open()
    site.watch.close_session(SID)
    await watcher.page.wait_for_selector("#state[data-state='closed']")
    assert "ended" in await watcher.page.inner_text("#notice")


async def test_a_page_whose_stream_was_cut_resumes_from_its_last_event(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID)
    await watcher.open()
    cell(feed, "before = 1", [], count=1)
    await watcher.cell(1)
    site.watch.end_streams()
    cell(feed, "meanwhile = 2", [], count=2)  # published while no stream is open
    await watcher.cell(2)
    cell(feed, "after = 3", [], count=3)
    await watcher.cell(3)
    assert site.resumes == [None, feed.epoch + ".4"]  # cell 1 ended with event 4
    snapshots = [u for u in watcher.requests if u.endswith("/snapshot")]
    assert len(snapshots) == 1  # resumed, not reloaded
    assert await watcher.page.locator("[data-cell]").count() == 3


async def test_a_page_that_fell_behind_the_buffer_gets_a_new_snapshot(
    site: Site, watcher: Watcher
) -> None:
    site.feeds.limits = FeedLimits(max_events=5)
    feed = site.session(SID)
    await watcher.open()
    cell(feed, "first = 1", [], count=1)
    await watcher.cell(1)
    site.watch.end_streams()
    for i in range(2, 8):  # more events than the buffer keeps, while no stream is open
        cell(feed, f"n = {i}", [stream("stdout", f"{i}\n")], count=i)
    await watcher.cell(7)
    assert await watcher.page.locator("[data-cell]").count() == 7
    assert "7" in await (await watcher.cell(7)).inner_text()


async def test_a_page_whose_grant_is_gone_says_it_has_no_access(
    site: Site, watcher: Watcher
) -> None:
    """As after a server restart: grants live in the server's memory."""
    site.session(SID)
    await watcher.open()
    site.grants.revoke(SID)
    site.watch.end_streams()
    await watcher.page.wait_for_selector("#state[data-state='no access']")
    assert "new link" in await watcher.page.inner_text("#notice")


async def test_a_flood_of_output_stops_at_its_cap_and_the_page_keeps_up(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID)
    await watcher.open()
    feed.cell_started("while True: print('x' * 1000)", tool="run_code")
    for _ in range(3000):  # 3 MB, over the 1 MiB the view shows of a running cell
        feed.stream("stdout", "x" * 999 + "\n")
    await watcher.page.wait_for_function(
        "() => document.querySelector('[data-cell=\"1\"] .outputs')?.textContent"
        ".includes('shows no more of the cell')"
    )
    feed.cell_finished(status="interrupted", outputs=[stream("stdout", "x\n" * 10)])
    done = await watcher.cell(1, "interrupted")
    shown = await (await done.query_selector(".outputs")).inner_text()
    assert shown.split() == ["x"] * 10  # the canonical outputs replace the live ones


async def test_every_request_stays_on_the_servers_origin(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID)
    await watcher.open()
    cell(
        feed,
        "everything()",
        [
            stream("stdout", "text\n"),
            display({"image/png": png(2, 2)}),
            display({"text/html": "<table><tr><td>1</td></tr></table>"}),
            display({"image/svg+xml": '<svg xmlns="http://www.w3.org/2000/svg"/>'}),
            error("E", "v", ["tb"]),
        ],
    )
    await watcher.cell(1)
    await watcher.settle()
    assert watcher.requests and watcher.foreign() == []
    assert {u.removeprefix(site.origin) for u in watcher.requests} >= {
        f"/watch/{SID}",
        "/watch/static/viewer.js",
        "/watch/static/viewer.css",
        f"/watch/{SID}/snapshot",
    }


# -- the MCP App, in a host's frame -------------------------------------------------------
async def open_host(watcher: Watcher) -> Any:
    await watcher.page.goto(f"{watcher.site.origin}/host")
    await watcher.page.wait_for_function(
        "() => window.hostLog.includes('ui/notifications/initialized')"
    )
    return watcher.page.frames[1]


async def test_the_app_follows_a_session_through_read_session(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID, name="in-the-chat")
    cell(feed, "a = 1", [stream("stdout", "first\n")], count=1)
    # Opened for view_session: it follows the session until the session ends.
    site.host_config = {
        "arguments": {"session_id": SID},
        "result": host_result({"session_id": SID, "url": "http://127.0.0.1/watch/x?ticket=t"}),
    }
    app = await open_host(watcher)
    await app.wait_for_selector('[data-cell="1"][data-status="ok"]')
    assert await app.inner_text("#title") == "in-the-chat"
    feed.cell_started("b = 2\nprint(b)", tool="run_code")
    feed.stream("stdout", "2\n")
    running = await app.wait_for_selector('[data-cell="2"][data-status="running"]')
    await app.wait_for_function("el => el.textContent.includes('2\\n')", arg=running)
    feed.cell_finished(status="ok", outputs=[stream("stdout", "2\n")], execution_count=2)
    await app.wait_for_selector('[data-cell="2"][data-status="ok"]')
    log = await watcher.page.evaluate("window.hostLog")
    assert log[:2] == ["ui/initialize", "ui/notifications/initialized"]
    assert "tools/call" in log
    site.feeds.close(SID)
    await app.wait_for_selector("#state[data-state='closed']")
    assert watcher.foreign() == [] and watcher.errors == []


async def test_the_app_of_a_run_follows_that_run_then_stops_reading(
    site: Site, watcher: Watcher
) -> None:
    feed = site.session(SID, name="in-the-chat")
    cell(feed, "a = 1", [stream("stdout", "first\n")], count=1)
    feed.cell_started("slow()", tool="run_code")
    # Opened while the call runs: its result comes later.
    site.host_config = {"arguments": {"session_id": SID, "code": "slow()"}}
    app = await open_host(watcher)
    running = await app.wait_for_selector('[data-cell="2"][data-status="running"]')
    assert await app.is_visible('[data-cell="1"][data-status="ok"]')
    feed.stream("stdout", "tick\n")
    await app.wait_for_function("el => el.textContent.includes('tick')", arg=running)
    assert await app.get_attribute("#link", "data-link") == "on"
    feed.cell_finished(status="ok", outputs=[stream("stdout", "tick\n")], execution_count=2)
    await watcher.page.evaluate(
        "r => window.sendResult(r)", host_result({"status": "ok", "session_id": SID})
    )
    await app.wait_for_selector('[data-cell="2"][data-status="ok"]')
    # The run is over: the view stops reading, and no read of it is left waiting.
    await app.wait_for_selector("#link[data-link='off']", state="attached")
    assert site.reading == 0
    reads = (await watcher.page.evaluate("window.hostLog")).count("tools/call")
    cell(feed, "later()", [], count=3)  # another call's run: not this view's
    assert site.reading == 0
    assert (await watcher.page.evaluate("window.hostLog")).count("tools/call") == reads
    assert await app.query_selector('[data-cell="3"]') is None
    assert watcher.foreign() == [] and watcher.errors == []


async def test_the_app_shows_a_fresh_runs_reply(site: Site, watcher: Watcher) -> None:
    report = {
        "status": "error",
        "stdout": "computing\n",
        "stderr": "",
        "result": None,
        "error": {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": "tb"},
        "execution_count": 1,
        "duration_s": 0.25,
        "notes": ["a note"],
    }
    image = {"type": "image", "mimeType": "image/png", "data": png(4, 4)}
    site.host_config = {
        "arguments": {"code": "print('computing'); 1/0"},
        "result": host_result(report, [{"type": "text", "text": "status: error"}, image]),
    }
    app = await open_host(watcher)
    shown = await app.wait_for_selector('[data-cell="1"][data-status="error"]')
    text = await shown.inner_text()
    assert "print('computing'); 1/0" in text and "computing" in text and "tb" in text
    assert "a note" in text
    img = await app.wait_for_selector('[data-cell="1"] img')
    await app.wait_for_function("img => img.complete && img.naturalWidth === 4", arg=img)
    log = await watcher.page.evaluate("window.hostLog")
    assert "tools/call" not in log  # a fresh run has no session to follow


async def test_output_in_the_app_is_as_inert_as_on_the_page(site: Site, watcher: Watcher) -> None:
    feed = site.session(SID)
    cell(
        feed,
        "show()",
        [display({"text/html": payload("app")}), stream("stdout", payload("app-text"))],
    )
    site.host_config = {"arguments": {"session_id": SID}}
    app = await open_host(watcher)
    await app.wait_for_selector('[data-cell="1"][data-status="ok"]')
    (inner,) = app.child_frames
    await inner.wait_for_load_state("load")
    assert await inner.query_selector("a#js") is not None  # rendered, inert
    await watcher.settle()
    assert site.pwned == ["/pwned/zz-sentinel"]
    assert watcher.dialogs == [] and watcher.foreign() == []
    assert payload("app-text") in await app.inner_text("body")
