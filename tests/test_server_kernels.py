"""A choice of kernel environments: list_kernels, and sessions and fresh runs on a second
kernelspec installed for the test (as a user registers a data environment)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    ) as server:
        yield server


WHICH = "import os; os.environ.get('KMCP_WHICH_KERNEL', 'default')"


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_list_kernels_and_run_on_the_one_chosen(kernels_server, kind):
    async with client_for(kind, kernels_server) as client:
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
    async with client_for("mcp", kernels_server) as client:
        for name in ("bash", "not-installed"):
            for tool, arguments in (
                ("run_code", {"code": "1", "kernel": name}),
                ("create_session", {"kernel": name}),
            ):
                result = await call(client, tool, **arguments)
                assert result.is_error and name in text_of(result), text_of(result)
