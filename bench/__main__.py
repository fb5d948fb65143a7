"""``python -m bench [--quick] [--only a,b,...]``: run cases, print a table, write results.json.

Run it from the repository root (``make bench`` does). ``--help`` lists the cases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from bench import report
from bench.cases import CASES, planned
from bench.harness import (
    DIAGNOSTICS,
    MARKER_NAME,
    OUT,
    PROJECTS,
    QUIET,
    RUN_ID,
    Bench,
    serve_diagnostic,
    serve_noop,
    wait_no_marked_kernels,
)
from tests.launchers import kernel_processes


def case_list() -> str:
    lines = ["cases (they run in this order):"]
    for c in CASES.values():
        text = c.description + (f" [target: {c.target}]" if c.target else "")
        text += f" (runs {', '.join(c.refs)} too)" if c.refs else ""
        lines += textwrap.wrap(
            text, 88, initial_indent=f"  {c.letter}  ", subsequent_indent="     "
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="kernel-mcp latency and throughput benchmark (docs/benchmarks.md).",
        epilog=case_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument(
        "--only",
        help=f"comma-separated cases out of {','.join(CASES)} "
        "(the references a case is compared with run too)",
    )
    # The benchmark's own servers, run as subprocesses of the benchmark.
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-diagnostic", choices=list(DIAGNOSTICS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def run(bench: Bench) -> dict[str, Any]:
    """Every planned case, in order; what each returned, merged."""
    results: dict[str, Any] = {}
    for letter in bench.letters:
        results.update(CASES[letter].run(bench))
    return results


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_noop:
        return serve_noop(args.port)
    if args.serve_diagnostic:
        return serve_diagnostic(args.serve_diagnostic, args.port)
    only = set(CASES) if not args.only else {c.strip() for c in args.only.split(",") if c.strip()}
    if not only <= set(CASES):
        cli.error(f"--only takes letters out of {''.join(CASES)}")
    letters = planned(only)

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ[MARKER_NAME] = RUN_ID  # every process started from here carries the marker
    before = len(kernel_processes())
    started = dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    print(
        f"kernel-mcp benchmark {started:%Y-%m-%d %H:%M %Z}; {os.cpu_count()} cores; "
        f"cases {letters}{' (quick)' if args.quick else ''}; "
        f"ipykernel processes before: {before}",
        flush=True,
    )
    results: dict[str, Any] = {}
    failed: BaseException | None = None
    tmp = Path(tempfile.mkdtemp(prefix="kernel-mcp-bench-"))
    try:
        projects = tmp / "projects"
        projects.mkdir()
        shutil.copy2(PROJECTS / "hello_world.py", projects / "hello_world.py")
        bench = Bench(quick=args.quick, letters=letters, tmp=tmp, projects=projects)
        results = run(bench)
    except BaseException as exc:  # still check for leftovers and report
        failed = exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        leftovers = wait_no_marked_kernels()
    after = len(kernel_processes())

    rows, checks = report.derive(results)
    report.print_report(rows, checks, results, QUIET)
    print(
        f"\nipykernel processes: before {before}, after {after} "
        f"(every ipykernel_launcher on the machine; other work on it may change the count); "
        f"kernels left behind by this run: {len(leftovers)}"
    )
    report.write_results(
        OUT / "results.json",
        started=started.isoformat(timespec="seconds"),
        load_before=load_before,
        quick=args.quick,
        letters=letters,
        results=results,
        checks=checks,
        quiet=QUIET,
        kernels={"before": before, "after": after, "left_behind": leftovers},
        error=failed,
    )
    print(f"All figures: {OUT / 'results.json'}")
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            return 130
        print(f"benchmark failed: {failed!r}", file=sys.stderr)
        raise failed
    return 1 if leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
