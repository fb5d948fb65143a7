"""kernel-mcp's benchmark, a package run as ``python -m bench`` (not a test).

::

    __main__.py  the command line: pick the cases, run them, report
    harness.py   statistics, servers, timed MCP calls, raw kernels, quiet waits, the floor
    cases.py     one function per case (a)...(k), and the registry that names them
    report.py    derived figures, target checks, the table, results.json

What each case measures, and the targets, are in docs/benchmarks.md. Servers, the
kernel gateway and the redis-server are started by the test suite's launchers
(``tests/launchers.py``), so run it from the repository root.
"""
