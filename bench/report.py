"""From the cases' figures to what a reader sees: derived figures, target checks, the table,
the components of (b) and (f), and ``bench/out/results.json``.

:func:`derive` labels the figures it knows. Any other figure that is a
:func:`bench.harness.summary` (a dict with ``n`` and ``p50_ms``) gets a row of its
own under its key, so that a new case shows up before anyone writes its label.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

Row = list[str]
Check = tuple[str, bool | None, str]

#: Figures printed under "Components" rather than as table rows.
COMPONENTS = [
    "a_noop_call",
    "a_warm_preamble_silent",
    "a_raw_hello",
    "a_fresh_first_execute_preamble_silent",
    "a_fresh_second_execute_hello",
    "a_fresh_preamble_then_hello",
    "a_fresh_preamble_pipelined_with_hello",
    "a_fresh_first_execute_pass",
    "a_fresh_second_execute_pass",
    "a_cold_start_to_ready",
]
#: The in-process breakdowns of (b) and (f): (figure, variant, label) ...
INPROCESS = [
    ("b_inprocess", "fresh_as_shipped", "in-memory MCP run_python, as shipped"),
    ("b_inprocess", "fresh_refill_deferred", "  same, pool refill deferred"),
    ("b_inprocess", "fresh_refill_and_stop_deferred", "  same, refill + kernel stop deferred"),
    ("f_inprocess", "session_no_journal", "in-process session 'pass', no journal"),
    ("f_inprocess", "session_with_journal", "in-process session 'pass', journal"),
]
#: ... and what each line shows of a variant: its total, then its parts (name, field).
INPROCESS_PARTS = {
    "b_inprocess": [
        ("total", "mcp_run_python_p50_ms"),
        ("preamble", "preamble_p50_ms"),
        ("execute", "execute_p50_ms"),
    ],
    "f_inprocess": [
        ("total", "runner_run_code_p50_ms"),
        ("Kernel.execute", "kernel_execute_p50_ms"),
        ("in-memory MCP", "in_memory_mcp_p50_ms"),
    ],
}
NOTES = [
    "(b)/(c) spacing: each call waits until the pool holds its idle kernels and the "
    "server's process tree is CPU-idle (and, up to 2 s, the machine under 35 % busy; "
    "gave up on the machine {machine_busy} of {waits} times).",
    "(f) includes the append of the run's cell to the session's journal; the .ipynb is "
    "rebuilt in the background.",
    "p99 of a sum is not the sum of p99s: floor p99 is an upper-bound approximation.",
]


def fmt(value: Any) -> str:
    return "" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def is_summary(entry: Any) -> bool:
    return isinstance(entry, dict) and "n" in entry and "p50_ms" in entry


def derive(r: dict[str, Any]) -> tuple[list[Row], list[Check]]:
    """The table rows and the target checks; adds derived figures (floor, speed-ups) to ``r``."""

    def p(key: str, stat: str = "p50_ms") -> float | None:
        entry = r.get(key)
        return entry.get(stat) if isinstance(entry, dict) else None

    rows: list[Row] = []
    shown: set[int] = {id(r[key]) for key in COMPONENTS if key in r}

    def row(case: str, entry: dict[str, Any] | None, ratio: str = "") -> None:
        if not entry:
            return
        shown.add(id(entry))
        rows.append(
            [
                case,
                str(entry.get("n", "")),
                fmt(entry.get("p50_ms")),
                fmt(entry.get("p99_ms")),
                ratio,
            ]
        )

    floor = {}
    for snippet in ("pass", "hello"):
        noop, raw = r.get("a_noop_call"), r.get(f"a_raw_{snippet}")
        if noop and raw:
            floor[snippet] = {
                "n": min(noop["n"], raw["n"]),
                "p50_ms": round(noop["p50_ms"] + raw["p50_ms"], 3),
                "p99_ms": round(noop["p99_ms"] + raw["p99_ms"], 3),
            }
            r[f"a_floor_{snippet}"] = floor[snippet]
    row("(a) no-op fastmcp call over /mcp", r.get("a_noop_call"))
    row("(a) same, tool with one argument", r.get("a_noop_call_with_argument"), "not in floor")
    row("(a) raw execute 'pass'", r.get("a_raw_pass"))
    row("(a) raw execute print(hello)", r.get("a_raw_hello"))
    row("(a) floor 'pass' = noop + raw", floor.get("pass"), "sum of the two")
    row("(a) floor hello = noop + raw", floor.get("hello"), "sum of the two")

    checks: list[Check] = []
    b, d = p("b_run_python_warm"), p("d_subprocess")
    ratio_b = ""
    if b is not None and d:
        ratio_b = f"(b)/(d) = {b / d:.2f}x"
        checks.append(("(b)/(d) <= 3", b / d <= 3, f"{b / d:.2f}x"))
        checks.append(("(b)/(d) <= 1.2 (forked kernels)", b / d <= 1.2, f"{b / d:.2f}x"))
    if b is not None and "hello" in floor:
        gap = b - floor["hello"]["p50_ms"]
        ratio_b += f"; (b)-(a) = {gap:+.1f} ms"
        checks.append(("(b) within 15 ms of (a)", gap <= 15, f"{gap:+.1f} ms (p50)"))
    row("(b) run_python hello, warm pool", r.get("b_run_python_warm"), ratio_b)
    c = p("c_run_python_cold")
    row(
        "(c) run_python hello, pool 0 (cold)",
        r.get("c_run_python_cold"),
        f"(c)/(d) = {c / d:.1f}x" if c and d else "",
    )
    row("(d) python hello_world.py subprocess", r.get("d_subprocess"), "reference")

    def load_row(key: str, label: str, note: str) -> None:
        """A row whose label and note are filled in from the entry's own figures."""
        entry = r.get(key)
        if entry:
            row(label.format(**entry), entry, note.format(**entry))

    load_row("e_back_to_back", "(e) back-to-back fresh runs", "{runs_per_s} runs/s over {wall_s} s")
    e = r.get("e_back_to_back")
    if e:
        checks.append(
            (
                "(e) >= 20 runs/s, p99 <= 100 ms",
                e["runs_per_s"] >= 20 and e["p99_ms"] <= 100,
                f"{e['runs_per_s']} runs/s, p99 {e['p99_ms']} ms",
            )
        )
    f = p("f_session_run_code")
    ratio_f = ""
    if f is not None and "pass" in floor:
        ratio_f = f"(f)/floor = {f / floor['pass']['p50_ms']:.2f}x"
        gap = f - floor["pass"]["p50_ms"]
        ratio_f += f" ({gap:+.1f} ms)"
        checks.append(
            (
                "(f) <= 1.2 x floor",
                f / floor["pass"]["p50_ms"] <= 1.2,
                f"{f / floor['pass']['p50_ms']:.2f}x (p50)",
            )
        )
        checks.append(("(f) p50 <= floor + 3 ms", gap <= 3, f"{gap:+.1f} ms"))
    row("(f) session run_code 'pass'", r.get("f_session_run_code"), ratio_f)
    shipped = r.get("f_ab_shipped")
    for variant, label in (
        ("shipped", "A/B: shipped server"),
        ("no_journal", "A/B: journal append off"),
    ):
        f2 = r.get(f"f_ab_{variant}")
        if f2 and "pass" in floor and shipped:
            note = f"{f2['p50_ms'] / floor['pass']['p50_ms']:.2f}x floor"
            if variant != "shipped":
                note += f"; {f2['p50_ms'] - shipped['p50_ms']:+.1f} ms vs shipped (patched)"
            row(f"(f) {label}", f2, note)
    for cells, entry in (r.get("f_notebook_rebuild") or {}).items():
        row(f"(f) notebook rebuild, {cells.replace('_', ' ')}", entry, "in-process, background")
    load_row(
        "g_concurrent",
        "(g) {sessions} sessions x {calls_per_session} concurrent",
        "{calls_per_s} calls/s",
    )
    g = r.get("g_concurrent")
    if g:
        checks.append(
            (
                "(g) >= 300 calls/s, p99 <= 50 ms",
                g["calls_per_s"] >= 300 and g["p99_ms"] <= 50,
                f"{g['calls_per_s']} calls/s, p99 {g['p99_ms']} ms",
            )
        )
        calls = g["sessions"] * g["calls_per_session"]
        budget = {
            part: round(g[f"{part}_cpu_s"] / calls * 1000, 2)
            for part in ("server", "kernels", "client")
        }
        r["g_cpu_ms_per_call"] = budget
        rows.append(
            [
                "(g) CPU per call: server / kernels / client",
                str(calls),
                "",
                "",
                " / ".join(f"{v} ms" for v in budget.values())
                + f" = {sum(budget.values()):.2f} ms on 2 cores",
            ]
        )
    for size in (1, 100, 1000, 10000):
        row(
            f"(r) recording one run at {size} cells",
            r.get(f"r_append_at_{size}"),
            "journal append, in-process",
        )
    flat = (r.get("r_flatness") or {}).get("last_over_first")
    if flat is not None:
        checks.append(("(r) flat within 2x, 1 to 10,000 cells", flat <= 2, f"{flat:.2f}x"))
    h = r.get("h_idle_rss")
    if h:
        note = f"{h['idle_new_session_mb']} MB (list_sessions)"
        after_f = (r.get("f_session_run_code") or {}).get("kernel_memory_mb_at_end")
        if after_f is not None:
            note += f"; (f)'s session after its runs: {after_f} MB"
        rows.append(["(h) idle session kernel RSS", "1", "", "", note])
    i = r.get("i_session")
    sub_total = r.get("i_subprocess_total_s")
    if i:
        speed = sub_total / i["iterate_total_s"] if sub_total else None
        naive = sub_total / i["naive_total_s"] if sub_total else None
        r["i_speedup_iterate"] = round(speed, 2) if speed else None
        r["i_speedup_naive"] = round(naive, 2) if naive else None
        row(
            "(i) session: load once, then iterate",
            i["iterate"],
            f"total {i['iterate_total_s']:.2f} s; {speed:.1f}x faster" if speed else "",
        )
        light = i.get("light_total_s")
        if light and sub_total:
            row(
                "(i) same, iterating with df.head()",
                i["light"],
                f"total {light:.2f} s; {sub_total / light:.1f}x faster (sensitivity)",
            )
            r["i_speedup_light"] = round(sub_total / light, 2)
        row(
            "(i) session: re-run the file",
            i["naive"],
            f"total {i['naive_total_s']:.2f} s; {naive:.1f}x faster" if naive else "",
        )
        if speed:
            checks.append(("(i) iteration >= 10x faster", speed >= 10, f"{speed:.1f}x"))
    file_sub = r.get("i_file_subprocess_total_s")
    for label, source in (("", i), (", KERNEL_MCP_PRELOAD=pandas", r.get("i_session_preload"))):
        if source and source.get("file_total_s") and file_sub:
            speed = file_sub / source["file_total_s"]
            key = "i_speedup_file" + ("_preload" if label else "")
            r[key] = round(speed, 2)
            row(
                f"(i) iterate_data.py x10 in a session{label}",
                source["file"],
                f"total {source['file_total_s']:.2f} s vs {file_sub:.2f} s; {speed:.1f}x faster",
            )
            checks.append(
                (f"(i) file x10 in a session >= 10x faster{label}", speed >= 10, f"{speed:.1f}x")
            )
    pre = r.get("i_session_preload")
    if pre:
        speed = sub_total / pre["iterate_total_s"] if sub_total else None
        r["i_speedup_iterate_preload"] = round(speed, 2) if speed else None
        row(
            "(i) iterate, KERNEL_MCP_PRELOAD=pandas",
            pre["iterate"],
            f"total {pre['iterate_total_s']:.2f} s; {speed:.1f}x faster" if speed else "",
        )
    if i and r.get("i_subprocess") and sub_total:
        # With the first call costing one full load, 10 calls can be at most
        # 10 x (one subprocess run) / (first call + 9 iterations) faster.
        first = i["iterate_first_call_ms"] / 1000
        later = i["iterate_later_calls"]["p50_ms"] / 1000
        per_sub = sub_total / r["i_subprocess"]["n"]
        r["i_bound_10_calls"] = round(10 * per_sub / (first + 9 * later), 2)
        r["i_bound_no_overhead"] = round(10 * per_sub / first, 2)
        r["i_per_iteration_speedup"] = round(per_sub / later, 1)
    if r.get("i_subprocess"):
        row(
            "(i) python load_data.py subprocess",
            r["i_subprocess"],
            f"total {sub_total:.2f} s (reference)",
        )
    if r.get("i_file_subprocess"):
        row(
            "(i) python iterate_data.py subprocess",
            r["i_file_subprocess"],
            f"total {file_sub:.2f} s (reference)",
        )
    for name, label in (("gateway", "gateway backend"), ("local", "local backend")):
        entry = r.get(f"j_{name}")
        if entry:
            note = "interleaved with the next two rows" if name == "gateway" else ""
            if name == "local" and "j_ratio_p50" in r:
                note = f"gateway/local = {r['j_ratio_p50']:.2f}x p50, {r['j_ratio_p99']:.2f}x p99"
            row(f"(j) session run_code 'pass', {label}", entry, note)
    entry = r.get("j_gateway_nodelay")
    if entry and r.get("j_local"):
        note = f"{entry['p50_ms'] / r['j_local']['p50_ms']:.2f}x local p50 (patched gateway)"
        row("(j) A/B: gateway with TCP_NODELAY", entry, note)
    load_row(
        "k_replicas",
        "(k) 2 replicas, {sessions} sessions x {calls_per_session}, hopping",
        "{calls_per_s} calls/s (gateway + redis)",
    )
    k = r.get("k_replicas")
    kl = r.get("k_local")
    if kl:
        note = f"{kl['calls_per_s']} calls/s (reference)"
        if k:
            note += f"; replicas/local = {k['calls_per_s'] / kl['calls_per_s']:.2f}x throughput"
        row(f"(k) 1 local server, {kl['sessions']} x {kl['calls_per_session']}", kl, note)
    sandbox_rows(r, row, rows, checks)
    w = p("w_reply_to_page")
    if w is not None:
        row("(w) run_code reply -> its cell on the page", r.get("w_reply_to_page"), "end to end")
        checks.append(("(w) reply to page p50 <= 100 ms", w <= 100, f"{w:+.1f} ms (p50)"))
    # Figures no label above knows (a new case, say): a row each, under their key.
    for key, entry in r.items():
        if is_summary(entry) and id(entry) not in shown:
            row(f"({key[0]}) {key}", entry)
    return rows, checks


def sandbox_rows(r: dict[str, Any], row: Any, rows: list[Row], checks: list[Check]) -> None:
    """(s) the sandbox on against off, (p) packages, (q) the projects cap, (t) forked kernels."""
    for part, label in (
        ("cold_start", "cold kernel start"),
        ("fresh", "(b) fresh run_python"),
        ("session", "(f) session 'pass'"),
    ):
        on, off, ratio = (r.get(f"s_{part}_{k}") for k in ("on", "off", "ratio"))
        if not (on and off and ratio):
            continue
        row(
            f"(s) {label}, sandbox on",
            on,
            f"{ratio['p50_on_over_off']:.2f}x off ({ratio['p50_added_ms']:+.1f} ms)",
        )
        row(f"(s) {label}, sandbox off", off, "same run, in turn")
        if part in ("cold_start", "fresh"):
            checks.append(
                (
                    f"(s) sandbox adds <= 10 % to {label}",
                    ratio["p50_on_over_off"] <= 1.10,
                    f"{ratio['p50_on_over_off']:.2f}x",
                )
            )
    row("(p) install a small pure wheel + dependency, warm cache", r.get("p_small_wheel_warm"))
    row("(p) install_packages, same wheels, live session", r.get("p_live_session_install"))
    row("(p) then run_code importing them", r.get("p_live_session_first_import"))
    pandas_install = r.get("p_pandas_warm")
    row("(p) install pandas (+3 dependencies), warm cache", pandas_install)
    if pandas_install:
        checks.append(
            (
                "(p) pandas from a warm cache < 2 s p50",
                pandas_install["p50_ms"] < 2000,
                f"{pandas_install['p50_ms']:.0f} ms",
            )
        )
    cap, nocap, cost = (r.get(f"q_fresh_{k}") for k in ("cap", "nocap", "ratio"))
    if cap and nocap and cost:
        files = f"{r.get('q_files', 0):,} files"
        row(
            f"(q) fresh run_python, {files}, projects cap on",
            cap,
            f"{cost['p50_on_over_off']:.2f}x off ({cost['p50_added_ms']:+.1f} ms)",
        )
        row(f"(q) fresh run_python, {files}, no cap", nocap, "same run, in turn")
        checks.append(
            (
                "(q) the cap adds <= 5 % to a fresh run",
                cost["p50_on_over_off"] <= 1.05,
                f"{cost['p50_on_over_off']:.2f}x",
            )
        )
    forked, spawned = r.get("t_start_forked"), r.get("t_start_spawned")
    if forked and spawned:
        speed = spawned["p50_ms"] / forked["p50_ms"]
        row(
            "(t) kernel start to ready (set-up included), forked",
            forked,
            f"{speed:.1f}x faster than spawned",
        )
        row("(t) kernel start to ready (set-up included), spawned", spawned, "same run, in turn")
        checks.append(
            (
                "(t) forked kernel start p50 <= 50 ms",
                forked["p50_ms"] <= 50,
                f"{forked['p50_ms']:.1f} ms",
            )
        )
    pandas, python = r.get("t_pandas_preloaded"), r.get("t_pandas_python")
    if pandas and python:
        share = pandas["p50_ms"] / python["p50_ms"]
        row("(t) pandas script, fresh run, preload", pandas, f"{share:.2f}x python script.py")
        row("(t) pandas script, python script.py", python, "reference")
        checks.append(("(t) pandas preloaded <= 0.2x python", share <= 0.2, f"{share:.2f}x"))
    memory = r.get("t_memory_ratio")
    if memory:
        pooled, one = r["t_pooled_memory"], r["t_spawned_kernel"]
        rows.append(
            [
                f"(t) {pooled['kernels']} idle pooled kernels, total PSS",
                str(pooled["kernels"]),
                "",
                "",
                f"{memory['pooled_total_pss_mb']} MB ({memory['with_template_mb']} MB with "
                f"the template) vs one spawned kernel's RSS {one['rss_mb']} MB: "
                f"{memory['over_one_spawned_rss']}x",
            ]
        )
        checks.append(
            (
                "(t) 16 pooled kernels' PSS <= 4x one spawned RSS",
                memory["over_one_spawned_rss"] <= 4,
                f"{memory['over_one_spawned_rss']}x",
            )
        )


def table(rows: list[Row]) -> str:
    head = ["case", "n", "p50 ms", "p99 ms", "ratio / note"]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, 4) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    top = line(head)
    return "\n".join([top, "-" * len(top), *(line(cells) for cells in rows)])


def components(r: dict[str, Any]) -> list[str]:
    """Lines that split (b) and (f) into parts measured separately."""
    lines = []
    for key in COMPONENTS:
        entry = r.get(key)
        if entry and entry.get("n"):
            lines.append(f"  {key[2:]:<40} p50 {fmt(entry['p50_ms']):>7} ms  (n={entry['n']})")
    for key, variant, label in INPROCESS:
        e = (r.get(key) or {}).get(variant)
        if isinstance(e, dict):
            total, *parts = INPROCESS_PARTS[key]
            detail = "; ".join(f"{name} {fmt(e[field])}" for name, field in parts)
            lines.append(f"  {label:<40} p50 {fmt(e[total[1]]):>7} ms  ({detail}; n={e['n']})")
    if "i_bound_10_calls" in r:
        lines.append(
            f"  {'(i) best possible speed-up, 10 calls':<40} {r['i_bound_no_overhead']:.1f}x "
            f"if iterations were free; {r['i_bound_10_calls']:.1f}x with the measured "
            f"iteration cost; one iteration is {r['i_per_iteration_speedup']:.0f}x faster "
            "than one subprocess run"
        )
    b = r.get("b_run_python_warm")
    if b and "server_duration_p50_ms" in b:
        lines.append(
            f"  {'b: server-reported duration_s of the file':<40} "
            f"p50 {fmt(b['server_duration_p50_ms']):>7} ms"
        )
    return lines


def print_report(rows: list[Row], checks: list[Check], r: dict[str, Any], quiet: Any) -> None:
    """The table, the components, the target verdicts and the notes, to stdout."""
    print()
    print(table(rows))
    parts = components(r)
    if parts:
        print("\nComponents (raw jupyter_client, measured in this process):")
        print("\n".join(parts))
    if checks:
        print("\nTargets:")
        for name, ok, value in checks:
            print(f"  {'MET ' if ok else 'MISS'}  {name}: {value}")
    notes = [note.format(**quiet) for note in NOTES]
    print("\nNotes:\n  " + "\n  ".join(notes))


def write_results(
    path: Path,
    *,
    started: str,
    load_before: tuple[float, float, float],
    quick: bool,
    letters: str,
    results: dict[str, Any],
    checks: list[Check],
    quiet: dict[str, int],
    kernels: dict[str, Any],
    error: BaseException | None,
) -> None:
    """Every figure, the date, the machine and the load average, as JSON."""
    record = {
        "date": started,
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "quick": quick,
        "cases": letters,
        "results": results,
        "targets": [{"target": n, "met": ok, "value": v} for n, ok, v in checks],
        "spacing_waits": quiet,
        "kernels": kernels,
        "error": repr(error) if error else None,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
