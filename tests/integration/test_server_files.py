"""write_file and read_file over real transports: the agent's write → run → fix loop, the
path guard's attacks against writes (nothing is ever written outside the folder), and file
names that are not UTF-8 (which a kernel may create, and no reply can carry)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import (
    call,
    client_for,
    raw_tool_call,
    running_server,
    structured,
    text_of,
)

pytestmark = pytest.mark.transport


@pytest.fixture(scope="module")
def files_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("files")
    with running_server(base, KERNEL_MCP_MAX_FILE_BYTES="4096") as server:
        yield server, base


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy", "stdio"])
async def test_write_run_read_the_traceback_fix_and_run_again(files_server, kind):
    server, _ = files_server
    name = f"loop-{kind}/task.py"
    async with client_for(kind, server) as client:
        broken = "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([]))\n"
        written = structured(await call(client, "write_file", path=name, content=broken))
        assert written == {"path": name, "bytes": len(broken), "created": True}
        failed = structured(await call(client, "run_python", file_name=name))
        assert failed["status"] == "error" and failed["error"]["ename"] == "ZeroDivisionError"
        refused = await call(client, "write_file", path=name, content="x = 1\n")
        assert refused.is_error and "overwrite" in text_of(refused)
        fixed = broken.replace("return sum(xs) / len(xs)", "return sum(xs) / len(xs) if xs else 0")
        again = structured(
            await call(client, "write_file", path=name, content=fixed, overwrite=True)
        )
        assert again["created"] is False
        ran = structured(await call(client, "run_python", file_name=name))
        assert ran["status"] == "ok" and ran["stdout"] == "0\n"
        read = structured(await call(client, "read_file", path=name))
        assert read["text"].splitlines()[1] == "2\t    return sum(xs) / len(xs) if xs else 0"
        assert (read["first_line"], read["last_line"], read["total_lines"]) == (1, 4, 4)
        assert read["truncated"] is False
        part = structured(await call(client, "read_file", path=name, offset=2, limit=2))
        assert part["text"].splitlines()[0].startswith("2\t")
        assert (part["last_line"], part["truncated"]) == (3, True)


def attacks(base: Path) -> list[tuple[str, str, str]]:
    """(requested path, what the refusal names, why) against a real layout."""
    projects, outside = base / "projects", base / "outside"
    (projects / "link_out").symlink_to(outside, target_is_directory=True)
    (projects / "link_in").symlink_to(projects / "sub", target_is_directory=True)
    (projects / "file_link.py").symlink_to(outside / "secret.py")
    (projects / "a_folder.py").mkdir()
    return [
        ("../outside/evil.py", "path_traversal", "climbs out"),
        ("sub/../../outside/evil.py", "path_traversal", "climbs out later"),
        (str(outside / "evil.py"), "outside_projects_dir", "absolute, outside"),
        ("/etc/evil.py", "outside_projects_dir", "absolute, system"),
        ("link_out/evil.py", "symlink", "through a symlinked folder to outside"),
        ("link_in/evil.py", "symlink", "through a symlinked folder, even inside"),
        ("file_link.py", "symlink", "onto a symlink"),
        ("a_folder.py", "not_regular_file", "onto a folder"),
        ("evil.sh", "file_type", "a suffix not allowed"),
        ("evil.PY.exe", "file_type", "a suffix hidden in the middle"),
        ("bad\x00name.py", "nul_byte", "a NUL byte"),
        ("", "empty_name", "no name"),
        ("sub/", "file_type", "a folder name"),
    ]


async def test_writes_are_refused_outside_and_through_symlinks(files_server):
    server, base = files_server
    cases = attacks(base)
    before = {p: p.stat().st_mtime_ns for p in (base / "outside").rglob("*")}
    async with client_for("mcp", server) as client:
        for path, rule, why in cases:
            result = await call(client, "write_file", path=path, content="print('pwned')\n")
            text = text_of(result)
            assert result.is_error, (why, text)
            assert f"rule: {rule}" in text, (why, text)
            assert str(base) not in text or str(base) in path, (why, text)
        too_big = await call(client, "write_file", path="big.py", content="#" * 5000)
        assert too_big.is_error and "KERNEL_MCP_MAX_FILE_BYTES" in text_of(too_big)
    # Nothing outside changed, and nothing named evil appeared anywhere.
    assert {p: p.stat().st_mtime_ns for p in (base / "outside").rglob("*")} == before
    assert not [p for p in base.rglob("*evil*")]
    assert (base / "outside" / "secret.py").read_text().startswith("print(")


async def test_read_file_keeps_to_the_same_rules(files_server):
    server, base = files_server
    async with client_for("mcp", server) as client:
        for path in ("../outside/secret.py", "escape.py", str(base / "outside" / "secret.py")):
            result = await call(client, "read_file", path=path)
            assert result.is_error and "rule:" in text_of(result), text_of(result)
            assert "s3cr3t" not in text_of(result)


async def test_a_written_file_gets_the_umask_mode_and_no_temporaries_remain(files_server):
    server, base = files_server
    async with client_for("mcp", server) as client:
        await call(client, "write_file", path="modes/plain.py", content="1\n")
    target = base / "projects" / "modes" / "plain.py"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["plain.py"]


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


# -- names that are not UTF-8 ---------------------------------------------------------------
MAKE_BAD_NAMES = """
import json, os
open(b'bad\\xff.py', 'w').write("print('ran bad')\\n")
os.makedirs(b'pkg\\xfe', exist_ok=True)
open(b'pkg\\xfe/inner.py', 'w').write('x = 1\\n')
nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'c1', 'metadata': {},
       'outputs': [], 'source': "print('nb ran')"}],
      'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
open(b'note\\xff.ipynb', 'w').write(json.dumps(nb))
"""


async def test_names_that_are_not_utf8_never_break_the_file_tools(tmp_path: Path):
    # Two principals sharing one folder (with a folder each, a's names never reach b):
    # what one principal's kernel creates must not break the other's tools.
    with running_server(
        tmp_path, KERNEL_MCP_TOKEN="a,b", KERNEL_MCP_PROJECTS_SHARED="true"
    ) as server:
        async with (
            client_for("mcp", server, auth="a") as a,
            client_for("sse", server, auth="b") as b,
        ):
            made = structured(await call(a, "run_code", code=MAKE_BAD_NAMES))
            assert made["status"] == "ok", made
            for client in (a, b):
                for pattern in ("**/*.py", "*.py", "bad*", "**/*.ipynb"):
                    result = await call(client, "list_files", pattern=pattern)
                    assert not result.is_error, text_of(result)
                    listing = structured(result)
                    assert not any("bad" in f or "pkg" in f for f in listing["files"]), listing
                    assert listing["not_utf8"] >= 1, (pattern, listing)
                    assert any("not UTF-8" in note for note in listing["notes"]), listing
                whole = structured(await call(client, "list_files", pattern="**/*.py"))
                assert "hello_world.py" in whole["files"] and whole["not_utf8"] == 2
            # Resources: a notebook name that is not UTF-8 in the notebooks folder.
            notebooks = os.fsencode(server.env["KERNEL_MCP_NOTEBOOKS_DIR"])
            os.makedirs(notebooks, exist_ok=True)
            Path(os.fsdecode(os.path.join(notebooks, b"odd\xff.ipynb"))).write_text("{}")
            listed = await b.list_resources()
            assert all(r.uri for r in listed)
        # A raw client can name such a file (a lone surrogate stands for the byte): it
        # reads and runs, and the reply shows the name escaped; a write is refused.
        read = raw_tool_call(server, "read_file", '{"path":"bad\\udcff.py"}', token="a")
        assert "ran bad" in read and "bad\\\\xff.py" in read, read
        ran = raw_tool_call(server, "run_python", '{"file_name":"bad\\udcff.py"}', token="b")
        assert "ran bad" in ran and '"status":"ok"' in ran.replace(" ", ""), ran
        nb = raw_tool_call(
            server, "run_notebook", '{"notebook_path":"note\\udcff.ipynb"}', token="a"
        )
        assert '"status":"ok"' in nb.replace(" ", ""), nb
        wrote = raw_tool_call(
            server, "write_file", '{"path":"new\\udcff.py","content":"x=1"}', token="a"
        )
        assert "rule: not_utf8_name" in wrote, wrote
        assert not any(b"new" in n for n in os.listdir(os.fsencode(tmp_path / "projects")))
