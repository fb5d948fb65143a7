/* kernel-mcp session viewer: a read-only, live notebook view of one session.
 *
 * One renderer, two ways in (the <html> element's data-mode):
 *  - "web": the page kernel-mcp serves at /watch/<session>. It reads the cells so far from
 *    ./snapshot, then the events as they happen from ./events (Server-Sent Events; the
 *    browser resumes a broken stream from the last event id it saw).
 *  - "app": the MCP App (the ui:// resource) inside a host such as Claude or VS Code. It
 *    talks to the host over postMessage (JSON-RPC 2.0, the MCP Apps extension), shows the
 *    tool result it was opened for, and follows a session with the read_session tool
 *    (a long poll: each call waits on the server for the next events). Opened for a run
 *    (run_code, run_python, run_notebook) it follows that run until the session is idle
 *    again, then stops reading; opened for view_session it follows the session until it
 *    ends. A chat holds many views, each a waiting call while it follows: they must not
 *    pile up against the server's per-principal limit on calls in flight.
 *
 * Kernel output is untrusted: code an AI wrote printed it. Text only ever enters this
 * page through textContent. HTML and SVG go only into <iframe sandbox=""> srcdoc frames:
 * no script, an opaque origin (so no cookie and no access to this page), no forms, no
 * popups, no navigation of this page; such a frame also inherits this page's
 * Content-Security-Policy and gets a stricter one of its own. JavaScript outputs are shown
 * as their source. Images are shown only as data: URLs of raster types whose payload is
 * checked to be base64. No selector or URL is ever built from output.
 */
(function () {
  "use strict";

  const doc = document;
  const mode = doc.documentElement.getAttribute("data-mode") === "app" ? "app" : "web";
  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
  const TEXT_TYPES = [
    "text/markdown", "text/latex", "application/json", "application/javascript", "text/plain",
  ];
  const TEXT_LABELS = {
    "text/markdown": "Markdown (shown as text)",
    "text/latex": "LaTeX (shown as text)",
    "application/json": "JSON",
    "application/javascript": "JavaScript (shown as text, not run)",
  };
  const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
  const FOLD_LINES = 40;

  // The one way markup reaches the DOM: a sandboxed frame's srcdoc. With Trusted Types
  // enforced (the page's CSP), any other HTML sink would throw.
  let framePolicy = null;
  if (window.trustedTypes && window.trustedTypes.createPolicy) {
    try {
      framePolicy = window.trustedTypes.createPolicy("kmcp-frame", { createHTML: (s) => s });
    } catch (err) {
      framePolicy = null;
    }
  }

  const ui = {
    cells: doc.getElementById("cells"),
    state: doc.getElementById("state"),
    link: doc.getElementById("link"),
    title: doc.getElementById("title"),
    notice: doc.getElementById("notice"),
    omitted: doc.getElementById("omitted"),
    empty: doc.getElementById("empty"),
  };
  /** cell number -> {root, prompt, meta, outputs} */
  const cells = new Map();
  let ended = false;

  // -- small DOM helpers ----------------------------------------------------------------
  function el(tag, className, text) {
    const node = doc.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function str(value) {
    return typeof value === "string" ? value : "";
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= doc.documentElement.scrollHeight - 48;
  }

  /** Run a DOM change; keep following the end of the page if the reader was there. */
  function mutate(change) {
    const follow = nearBottom();
    change();
    ui.empty.hidden = cells.size > 0;
    if (follow) window.scrollTo(0, doc.documentElement.scrollHeight);
  }

  function notice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
  }

  function setState(state) {
    ui.state.textContent = state;
    ui.state.setAttribute("data-state", state);
  }

  function setLink(text) {
    ui.link.textContent = text;
    ui.link.setAttribute("data-link", text ? "on" : "off");
  }

  // -- terminal text: carriage returns, backspaces, ANSI colours -----------------------
  /** \r and \b as a terminal (and JupyterLab) shows them. */
  function applyControl(text) {
    if (text.indexOf("\r") >= 0) {
      text = text.replace(/\r+\n/g, "\n").replace(/^[^\n]*\r+(?=[^\r\n])/gm, "");
      text = text.replace(/\r/g, "");
    }
    while (text.indexOf("\x08") >= 0) {
      const reduced = text.replace(/[^\n\x08]\x08/g, "");
      if (reduced === text) {
        text = text.replace(/\x08/g, "");
        break;
      }
      text = reduced;
    }
    return text;
  }

  const ESCAPES =
    /\x1b\[([0-9;]*)m|\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

  /** Fill `node` with `text`, its SGR colours as classes, other escapes dropped. */
  function renderTerminal(node, text) {
    text = applyControl(text);
    node.textContent = "";
    let fg = null;
    let bold = false;
    let last = 0;
    const put = (part) => {
      if (!part) return;
      if (fg === null && !bold) {
        node.appendChild(doc.createTextNode(part));
        return;
      }
      const span = el("span", (bold ? "ansi-bold " : "") + (fg === null ? "" : "ansi-fg-" + fg));
      span.textContent = part;
      node.appendChild(span);
    };
    ESCAPES.lastIndex = 0;
    let match;
    while ((match = ESCAPES.exec(text)) !== null) {
      put(text.slice(last, match.index));
      last = ESCAPES.lastIndex;
      if (match[1] === undefined) continue;
      const codes = (match[1] || "0").split(";").map(Number);
      for (let i = 0; i < codes.length; i++) {
        const code = codes[i];
        if (code === 0) { fg = null; bold = false; }
        else if (code === 1) bold = true;
        else if (code === 22) bold = false;
        else if (code >= 30 && code <= 37) fg = code - 30;
        else if (code >= 90 && code <= 97) fg = code - 90 + 8;
        else if (code === 39) fg = null;
        else if (code === 38 || code === 48) i += codes[i + 1] === 5 ? 2 : 4;
      }
    }
    put(text.slice(last));
  }

  // -- outputs --------------------------------------------------------------------------
  function frameHead() {
    if (mode === "app") {
      const css = doc.getElementById("kmcp-output-css");
      return (
        '<!doctype html><html><head><meta charset="utf-8">' +
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; " +
        "img-src data:; style-src 'unsafe-inline'\">" +
        "<style>" + (css ? css.content.textContent : "") + "</style></head><body>"
      );
    }
    const sheet = location.origin + "/watch/static/output.css";
    return (
      '<!doctype html><html><head><meta charset="utf-8">' +
      "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; " +
      "img-src data:; style-src " + sheet + '">' +
      '<link rel="stylesheet" href="' + sheet + '"></head><body>'
    );
  }

  /** A guess at a frame's height: its content cannot be measured (another origin). */
  function frameHeight(markup, kind) {
    if (kind === "svg") {
      const m = /<svg\b[^>]*?\sheight="([0-9.]+)(px|pt)?"/i.exec(markup);
      if (m) {
        const px = parseFloat(m[1]) * (m[2] === "pt" ? 4 / 3 : 1);
        return Math.max(40, Math.min(900, Math.ceil(px) + 12));
      }
      return 360;
    }
    const rows = (markup.match(/<(tr|br|p|li|h[1-6]|div)\b/gi) || []).length;
    const lines = (markup.match(/\n/g) || []).length;
    return Math.max(48, Math.min(600, 28 + 22 * Math.max(rows, Math.ceil(lines / 3))));
  }

  function frame(markup, kind) {
    const node = el("iframe", "frame " + kind);
    // Empty sandbox: no scripts, an opaque origin, no forms, popups or top navigation.
    node.setAttribute("sandbox", "");
    node.setAttribute("referrerpolicy", "no-referrer");
    node.setAttribute("title", (kind === "svg" ? "SVG" : "HTML") + " output (sandboxed)");
    const html = frameHead() + markup;
    node.srcdoc = framePolicy ? framePolicy.createHTML(html) : html;
    node.style.height = frameHeight(markup, kind) + "px";
    return node;
  }

  function image(mime, payload) {
    const node = el("img");
    node.alt = mime + " output";
    node.src = "data:" + mime + ";base64," + payload;
    return node;
  }

  function richest(data) {
    for (const mime of IMAGE_TYPES) {
      const payload = str(data[mime]);
      if (payload && BASE64.test(payload)) return image(mime, payload);
    }
    if (typeof data["text/html"] === "string") return frame(data["text/html"], "html");
    if (typeof data["image/svg+xml"] === "string") return frame(data["image/svg+xml"], "svg");
    for (const mime of TEXT_TYPES) {
      if (typeof data[mime] !== "string") continue;
      const box = el("div");
      if (TEXT_LABELS[mime]) box.appendChild(el("div", "kind", TEXT_LABELS[mime]));
      box.appendChild(el("pre", null, data[mime]));
      return box;
    }
    return null;
  }

  function renderOutput(output) {
    const kind = str(output.output_type);
    let node;
    if (kind === "stream") {
      const name = output.name === "stderr" ? "stderr" : "stdout";
      node = el("pre", "output stream " + name);
      node.kmcpName = name;
      node.kmcpRaw = str(output.text);
      renderTerminal(node, node.kmcpRaw);
      return node;
    }
    if (kind === "error") {
      node = el("pre", "output error");
      const traceback = str(output.traceback);
      renderTerminal(node, traceback || str(output.ename) + ": " + str(output.evalue));
      return node;
    }
    node = el("div", "output display");
    if (kind === "execute_result" || kind === "display_data" || kind === "update_display_data") {
      if (typeof output.display_id === "string") node.kmcpDisplayId = output.display_id;
      const data = output.data && typeof output.data === "object" ? output.data : {};
      const shown = richest(data);
      if (shown) node.appendChild(shown);
    }
    for (const text of Array.isArray(output.notes) ? output.notes : []) {
      node.appendChild(el("p", "note", "(" + str(text) + ")"));
    }
    return node;
  }

  // -- cells ----------------------------------------------------------------------------
  function fillMeta(entry, cell) {
    const running = cell.status === null || cell.status === undefined;
    const count = Number.isInteger(cell.execution_count) ? cell.execution_count : " ";
    entry.prompt.textContent = running ? "In [*]:" : "In [" + count + "]:";
    entry.root.setAttribute("data-status", running ? "running" : str(cell.status));
    const parts = [[str(cell.tool), null]];
    if (cell.label) parts.push([str(cell.label), null]);
    parts.push([running ? "running" : str(cell.status), "status"]);
    if (typeof cell.duration_s === "number") parts.push([cell.duration_s.toFixed(3) + " s", null]);
    entry.meta.textContent = "";
    parts.filter((part) => part[0]).forEach((part, i) => {
      if (i) entry.meta.appendChild(doc.createTextNode(" · "));
      entry.meta.appendChild(el("span", part[1], part[0]));
    });
  }

  function fillOutputs(entry, cell) {
    entry.outputs.textContent = "";
    for (const output of Array.isArray(cell.outputs) ? cell.outputs : []) {
      entry.outputs.appendChild(renderOutput(output));
    }
    if (cell.omitted_outputs > 0) {
      entry.outputs.appendChild(
        el("p", "note", "(" + cell.omitted_outputs + " more outputs are in the notebook)"),
      );
    }
    for (const text of Array.isArray(cell.notes) ? cell.notes : []) {
      entry.outputs.appendChild(el("p", "note", str(text)));
    }
  }

  function sourceNode(source) {
    const pre = el("pre", "source", source);
    const lines = source.split("\n").length;
    if (lines <= FOLD_LINES) return pre;
    const fold = el("details", "source-fold");
    fold.appendChild(el("summary", null, lines + " lines of source"));
    fold.appendChild(pre);
    return fold;
  }

  function addCell(cell) {
    const number = Number(cell.cell);
    if (!Number.isInteger(number) || cells.has(number)) return cells.get(number);
    const root = el("section", "cell");
    root.setAttribute("data-cell", String(number));
    const prompt = el("div", "prompt");
    const body = el("div", "body");
    const meta = el("div", "meta");
    const outputs = el("div", "outputs");
    body.appendChild(meta);
    body.appendChild(sourceNode(str(cell.source)));
    body.appendChild(outputs);
    root.appendChild(prompt);
    root.appendChild(body);
    const entry = { root, prompt, meta, outputs };
    cells.set(number, entry);
    fillMeta(entry, cell);
    fillOutputs(entry, cell);
    ui.cells.appendChild(root);
    return entry;
  }

  function finishCell(cell) {
    const entry = cells.get(Number(cell.cell)) || addCell(cell);
    if (!entry) return;
    fillMeta(entry, cell);
    fillOutputs(entry, cell);
  }

  function appendStream(number, name, text) {
    const entry = cells.get(Number(number));
    if (!entry) return;
    name = name === "stderr" ? "stderr" : "stdout";
    text = str(text);
    const last = entry.outputs.lastElementChild;
    if (!last || last.kmcpName !== name) {
      entry.outputs.appendChild(renderOutput({ output_type: "stream", name, text }));
      return;
    }
    const plain = !/[\r\x08\x1b]/.test(text) && !/[\r\x08\x1b]/.test(last.kmcpRaw);
    last.kmcpRaw += text;
    if (plain) last.appendChild(doc.createTextNode(text));
    else renderTerminal(last, last.kmcpRaw);
  }

  function addOutput(number, output) {
    const entry = cells.get(Number(number));
    if (!entry || !output || typeof output !== "object") return;
    if (output.output_type === "update_display_data") {
      // Compared as strings, never put into a selector.
      for (const other of cells.values()) {
        for (const node of Array.from(other.outputs.children)) {
          if (node.kmcpDisplayId !== undefined && node.kmcpDisplayId === output.display_id) {
            node.replaceWith(renderOutput(output));
          }
        }
      }
      return;
    }
    entry.outputs.appendChild(renderOutput(output));
  }

  function renderSnapshot(snapshot) {
    cells.clear();
    ui.cells.textContent = "";
    const session = snapshot.session || {};
    const name = str(session.name) || str(session.id);
    ui.title.textContent = name;
    doc.title = "kernel-mcp · " + name;
    const omitted = Number(snapshot.omitted_cells) || 0;
    ui.omitted.textContent = omitted
      ? omitted + " earlier cells are not shown here; the session's notebook has them."
      : "";
    ui.omitted.hidden = !omitted;
    for (const cell of Array.isArray(snapshot.cells) ? snapshot.cells : []) addCell(cell);
    if (snapshot.running) addCell(snapshot.running);
    setState(str(snapshot.state) || "idle");
  }

  function sessionEnded() {
    ended = true;
    setState("closed");
    setLink("");
    notice("The session has ended. Its notebook keeps every run.");
  }

  /** One event of the feed (kernel_mcp/watch/feed.py describes them). */
  function handle(event) {
    if (!event || typeof event !== "object") return;
    mutate(() => {
      switch (event.kind) {
        case "reset": renderSnapshot(event.snapshot || {}); break;
        case "status": setState(str(event.state)); break;
        case "cell_started": addCell(event.cell || {}); break;
        case "stream": appendStream(event.cell, event.name, event.text); break;
        case "output": addOutput(event.cell, event.output); break;
        case "clear_output": {
          const entry = cells.get(Number(event.cell));
          if (entry) entry.outputs.textContent = "";
          break;
        }
        case "cell_finished": finishCell(event.cell || {}); break;
        case "closed": sessionEnded(); break;
        default: break;
      }
    });
  }

  // -- web: snapshot, then Server-Sent Events ------------------------------------------
  function web() {
    const sessionId = decodeURIComponent(location.pathname.split("/")[2] || "");
    const base = "/watch/" + encodeURIComponent(sessionId);
    let backoff = 1000;

    function later() {
      setLink("reconnecting…");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    }

    function refused() {
      setState("no access");
      setLink("");
      notice(
        "This view has no access: its link was used already or expired, or the session is " +
          "not yours. Ask the agent for a new link (view_session).",
      );
    }

    function follow(cursor) {
      const source = new EventSource(base + "/events?after=" + encodeURIComponent(cursor));
      source.onopen = () => {
        backoff = 1000;
        setLink("live");
      };
      source.onmessage = (message) => {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (err) {
          return;
        }
        handle(event);
        if (ended) source.close();
      };
      source.onerror = () => {
        if (ended) return source.close();
        if (source.readyState === EventSource.CLOSED) later();
        else setLink("reconnecting…");
      };
    }

    async function connect() {
      let response;
      try {
        response = await fetch(base + "/snapshot", { cache: "no-store", credentials: "same-origin" });
      } catch (err) {
        return later();
      }
      if (response.status === 403) return refused();
      if (response.status === 410 || response.status === 404) return mutate(sessionEnded);
      if (!response.ok) return later();
      const snapshot = await response.json();
      mutate(() => renderSnapshot(snapshot));
      follow(str(snapshot.cursor));
    }

    connect();
  }

  // -- app: the MCP Apps bridge (JSON-RPC over postMessage with the host) ----------------
  function app() {
    const pending = new Map();
    let nextId = 1;
    let following = null;
    let stopped = false;
    let toolArguments = {};
    let resultSeen = false;
    let runFollowed = false;
    const RUN_ARGUMENTS = ["code", "file_name", "notebook_path"];
    /** Opened for a run (not for view_session): it follows that run only. */
    const forRun = () => RUN_ARGUMENTS.some((name) => typeof toolArguments[name] === "string");

    const send = (message) => window.parent.postMessage(message, "*");
    const notify = (method, params) => send({ jsonrpc: "2.0", method, params });
    const respond = (id, result) => send({ jsonrpc: "2.0", id, result });
    function request(method, params) {
      const id = nextId++;
      send({ jsonrpc: "2.0", id, method, params });
      return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
    }

    function theme(context) {
      if (!context || typeof context !== "object") return;
      if (context.theme === "dark" || context.theme === "light") {
        doc.documentElement.setAttribute("data-theme", context.theme);
      }
      const variables = context.styles && context.styles.variables;
      if (variables && typeof variables === "object") {
        for (const [name, value] of Object.entries(variables)) {
          if (/^--[a-z0-9-]+$/.test(name) && typeof value === "string") {
            doc.documentElement.style.setProperty(name, value);
          }
        }
      }
    }

    function textOf(result) {
      const content = Array.isArray(result && result.content) ? result.content : [];
      return content.filter((b) => b && b.type === "text").map((b) => str(b.text)).join("\n");
    }

    /** A run tool's reply (RunReport and its image blocks) as one cell, for fresh runs. */
    function cellOfReply(result) {
      const report = result.structuredContent || {};
      const outputs = [];
      if (report.stdout) outputs.push({ output_type: "stream", name: "stdout", text: report.stdout });
      if (report.stderr) outputs.push({ output_type: "stream", name: "stderr", text: report.stderr });
      for (const block of Array.isArray(result.content) ? result.content : []) {
        if (block && block.type === "image" && IMAGE_TYPES.indexOf(block.mimeType) >= 0) {
          outputs.push({ output_type: "display_data", data: { [block.mimeType]: str(block.data) } });
        }
      }
      if (typeof report.result === "string") {
        outputs.push({
          output_type: "execute_result",
          data: { "text/plain": report.result },
          execution_count: report.execution_count,
        });
      }
      if (report.error && typeof report.error === "object") {
        outputs.push({
          output_type: "error",
          ename: report.error.ename,
          evalue: report.error.evalue,
          traceback: report.error.traceback,
        });
      }
      const source =
        str(toolArguments.code) || (toolArguments.file_name ? "# " + str(toolArguments.file_name) : "");
      return {
        cell: 1,
        source,
        tool: report.file ? "run_python" : "run_code",
        label: report.file || null,
        status: str(report.status) || "ok",
        execution_count: report.execution_count,
        duration_s: report.duration_s,
        outputs,
        notes: Array.isArray(report.notes) ? report.notes : [],
      };
    }

    async function followSession(sessionId) {
      if (following === sessionId || runFollowed) return;
      following = sessionId;
      let cursor = "";
      let sawStart = false;
      setLink("live");
      while (!stopped && following === sessionId) {
        let result;
        try {
          result = await request("tools/call", {
            name: "read_session",
            arguments: { session_id: sessionId, since: cursor, wait_s: 20 },
          });
        } catch (err) {
          setLink("");
          notice("The host did not let this view read the session (" + str(err && err.message) + ").");
          return;
        }
        if (!result || result.isError) {
          setLink("");
          notice(textOf(result) || "The session cannot be read.");
          return;
        }
        const page = result.structuredContent || {};
        if (page.snapshot) mutate(() => renderSnapshot(page.snapshot));
        for (const event of Array.isArray(page.events) ? page.events : []) {
          if (event && event.kind === "cell_started") sawStart = true;
          handle(event);
        }
        cursor = str(page.cursor);
        if (page.state === "closed" || ended) {
          if (!ended) mutate(sessionEnded);
          return;
        }
        // A run's view is done once the session is no longer busy after that run began
        // (a cell started while it followed, or the run's result arrived).
        if (forRun() && page.state !== "busy" && (sawStart || resultSeen)) {
          following = null;
          runFollowed = true;
          setLink("");
          return;
        }
      }
    }

    function onInput(args) {
      toolArguments = args && typeof args === "object" ? args : {};
      if (typeof toolArguments.session_id === "string" && toolArguments.session_id) {
        followSession(toolArguments.session_id);
      }
    }

    function onResult(result) {
      if (!result || typeof result !== "object") return;
      const report = result.structuredContent || {};
      resultSeen = true;
      if (typeof report.session_id === "string" && report.session_id) {
        followSession(report.session_id);
        return;
      }
      if (following) return;
      mutate(() => {
        renderSnapshot({ session: { name: "a fresh kernel" }, state: "closed", cells: [] });
        addCell(cellOfReply(result));
      });
    }

    window.addEventListener("message", (event) => {
      if (event.source !== window.parent) return;
      const message = event.data;
      if (!message || typeof message !== "object" || message.jsonrpc !== "2.0") return;
      if (typeof message.method === "string") {
        const params = message.params || {};
        switch (message.method) {
          case "ui/notifications/tool-input": onInput(params.arguments); break;
          case "ui/notifications/tool-result": onResult(params); break;
          case "ui/notifications/tool-cancelled": notice("The call was cancelled."); break;
          case "ui/notifications/host-context-changed": theme(params); break;
          case "ui/resource-teardown": stopped = true; respond(message.id, {}); break;
          case "ping": respond(message.id, {}); break;
          default: break;
        }
        return;
      }
      const waiter = pending.get(message.id);
      if (!waiter) return;
      pending.delete(message.id);
      if (message.error) waiter.reject(message.error);
      else waiter.resolve(message.result);
    });

    setState("waiting");
    request("ui/initialize", {
      appCapabilities: { availableDisplayModes: ["inline"] },
      appInfo: { name: "kernel-mcp session view", version: "1" },
      protocolVersion: "2026-01-26",
    }).then((result) => {
      theme(result && result.hostContext);
      notify("ui/notifications/initialized", {});
      if (window.ResizeObserver) {
        new ResizeObserver(() => {
          const box = doc.documentElement.getBoundingClientRect();
          notify("ui/notifications/size-changed", {
            width: Math.ceil(box.width),
            height: Math.ceil(box.height),
          });
        }).observe(doc.documentElement);
      }
    }, (err) => notice("The host refused the view (" + str(err && err.message) + ")."));
  }

  if (mode === "app") app();
  else web();
})();
