"""A choice of kernel environments: list_kernels, and sessions and fresh runs on a second
kernelspec installed for the test (as a user registers a data environment), on a server
shared by two principals (tokens "a" and "b")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import call, client_for, running_server, structured, text_of

pytestmark = pytest.mark.transport

ALT = "kmcp-alt"


@pytest.fixture(scope="module")
def kernels_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("kernels")
    prefix = base / "env"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ipykernel",
            "install",
            "--prefix",
            str(prefix),
            "--name",
            ALT,
            "--display-name",
            "Alternative data env",
        ],
        check=True,
        capture_output=True,
    )
    spec = prefix / "share" / "jupyter" / "kernels" / ALT / "kernel.json"
    data = json.loads(spec.read_text())
    data["env"] = {"KMCP_WHICH_KERNEL": "alt"}  # how the test tells the kernels apart
    spec.write_text(json.dumps(data))
    with running_server(
        base,
        JUPYTER_PATH=str(prefix / "share" / "jupyter"),
        KERNEL_MCP_KERNELS=f"{ALT},not-installed",
        KERNEL_MCP_TOKEN="a,b",
    ) as server:
        yield server


WHICH = "import os; os.environ.get('KMCP_WHICH_KERNEL', 'default')"


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_list_kernels_and_run_on_the_one_chosen(kernels_server, kind):
    async with client_for(kind, kernels_server, auth="a") as client:
        listed = {k["name"]: k for k in structured(await call(client, "list_kernels"))["kernels"]}
        assert list(listed) == ["python3", ALT, "not-installed"]
        assert listed["python3"]["default"] and listed["python3"]["available"]
        assert listed[ALT]["display_name"] == "Alternative data env"
        assert listed[ALT]["language"] == "python" and listed[ALT]["interpreter"]
        assert listed["not-installed"]["available"] is False

        fresh_default = structured(await call(client, "run_code", code=WHICH))
        fresh_alt = structured(await call(client, "run_code", code=WHICH, kernel=ALT))
        assert (fresh_default["result"], fresh_alt["result"]) == ("'default'", "'alt'")

        sid = structured(await call(client, "create_session", kernel=ALT))["session_id"]
        try:
            assert (
                structured(await call(client, "run_code", code=WHICH, session_id=sid))["result"]
                == "'alt'"
            )
            # A restart keeps the session's kernelspec.
            await call(client, "restart_session", session_id=sid)
            assert (
                structured(await call(client, "run_code", code=WHICH, session_id=sid))["result"]
                == "'alt'"
            )
            listed_sessions = structured(await call(client, "list_sessions"))["sessions"]
            assert next(s for s in listed_sessions if s["session_id"] == sid)["kernel"] == ALT
        finally:
            await call(client, "close_session", session_id=sid)


async def test_a_kernel_that_is_not_allowed_or_not_installed_is_refused(kernels_server):
    async with client_for("mcp", kernels_server, auth="b") as client:
        for name in ("bash", "not-installed"):
            for tool, arguments in (
                ("run_code", {"code": "1", "kernel": name}),
                ("create_session", {"kernel": name}),
            ):
                result = await call(client, tool, **arguments)
                assert result.is_error and name in text_of(result), text_of(result)


def rerun(path: Path, server) -> nbformat.NotebookNode:
    """Execute a notebook as nbclient would, finding kernelspecs where the server does."""
    nb = nbformat.read(path, as_version=4)
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = server.env["JUPYTER_PATH"]
    try:
        NotebookClient(
            nb, timeout=120, resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    finally:
        if saved is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = saved
    return nb


def last_result(nb: nbformat.NotebookNode) -> str:
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    return next(o for o in reversed(outputs) if o.output_type == "execute_result")["data"][
        "text/plain"
    ]


async def test_a_session_records_its_own_kernelspec_so_its_export_reruns_on_it(kernels_server):
    notebooks = Path(kernels_server.env["KERNEL_MCP_NOTEBOOKS_DIR"])
    async with client_for("mcp", kernels_server, auth="b") as client:
        sid = structured(await call(client, "create_session", name="alt-kernel", kernel=ALT))[
            "session_id"
        ]
        try:
            ran = structured(await call(client, "run_code", code=WHICH, session_id=sid))
            assert ran["result"] == "'alt'"
            exported = await call(client, "export_notebook", session_id=sid, name="alt-export")
            assert not exported.is_error, text_of(exported)
        finally:
            await call(client, "close_session", session_id=sid)
        fresh = structured(
            await call(client, "run_code", code=WHICH, kernel=ALT, save_notebook=True)
        )
    for path in (
        notebooks / "alt-export.ipynb",
        Path(fresh["notebook"].replace("notebook://", f"{notebooks}/") + ".ipynb"),
    ):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec == {
            "name": ALT,
            "display_name": "Alternative data env",
            "language": "python",
        }, path
        assert nb.metadata.language_info["name"] == "python"
        # Re-run elsewhere, it runs on the kernelspec it was recorded on.
        assert last_result(rerun(path, kernels_server)) == "'alt'"
