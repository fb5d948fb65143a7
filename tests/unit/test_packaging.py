"""The package's metadata: every import declared with a range, the data libraries in the
default install, one version, the license, the MCP registry's server.json and the README's
install instructions. ``tests/integration/test_install.py`` builds and installs the real thing."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from kernel_mcp import __version__
from kernel_mcp.launch import wire
from tests.launchers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "server.schema.json"
SERVER_JSON = json.loads((ROOT / "server.json").read_text())
README = (ROOT / "README.md").read_text()


def imported_modules() -> dict[str, set[str]]:
    """Top-level names kernel_mcp imports (anywhere in a module), and the files that do."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "kernel_mcp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def declared() -> dict[str, Requirement]:
    """Every requirement in pyproject: the default install and each extra."""
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra, texts in PROJECT["optional-dependencies"].items():
        if extra != "test":
            requirements += [Requirement(text) for text in texts]
    return {canonical(r.name): r for r in requirements}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_range(requirement: Requirement) -> bool:
    """A lower bound and an upper bound (an exact pin is both)."""
    operators = {spec.operator for spec in requirement.specifier}
    if "==" in operators or "~=" in operators:
        return True
    return bool(operators & {">=", ">"}) and bool(operators & {"<", "<="})


def test_every_package_kernel_mcp_imports_is_declared_with_a_range() -> None:
    providers = importlib.metadata.packages_distributions()
    wanted = declared()
    missing = []
    for module, files in sorted(imported_modules().items()):
        # wire.MODULE is kernel_mcp's own launch/wire.py, as the fork template imports it.
        if module in sys.stdlib_module_names or module in ("kernel_mcp", wire.MODULE):
            continue
        dists = [canonical(d) for d in providers.get(module, [])]
        assert dists, f"{module} (imported in {sorted(files)}) is not installed here"
        dist = dists[0]
        if dist in wanted:
            assert is_range(wanted[dist]), f"{wanted[dist]} has no range"
            continue
        # fastmcp's code ships in fastmcp-slim, which fastmcp pins exactly.
        pinned_by = [
            name
            for name in wanted
            if any(
                canonical(Requirement(r).name) == dist and "==" in str(Requirement(r).specifier)
                for r in importlib.metadata.requires(name) or []
            )
        ]
        if not pinned_by:
            missing.append(f"{module} ({dist}, imported in {sorted(files)})")
    assert not missing, f"imported but not declared: {missing}"


def test_declared_runtime_requirements_all_have_ranges() -> None:
    loose = [str(r) for r in declared().values() if not is_range(r)]
    assert not loose


def test_data_work_comes_with_the_default_install() -> None:
    """Kernels run on the server's interpreter, and `uvx kernel-mcp` users never see an
    extra: numpy, pandas and matplotlib are plain dependencies."""
    names = {canonical(Requirement(text).name) for text in PROJECT["dependencies"]}
    assert {"numpy", "pandas", "matplotlib", "psutil"} <= names


def test_the_version_is_written_once() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    source = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert source == {"attr": "kernel_mcp.__version__"}
    done = subprocess.run(
        [sys.executable, "-m", "kernel_mcp", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"kernel-mcp {__version__}"


def test_the_license_file_is_the_declared_bsd_3_clause() -> None:
    assert PROJECT["license"] == "BSD-3-Clause"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License\n")
    assert "Neither the name of the copyright holder nor the names of its" in text


def test_the_metadata_has_classifiers_and_project_urls() -> None:
    classifiers = PROJECT["classifiers"]
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression
    assert {"Homepage", "Repository", "Issues"} <= set(PROJECT["urls"])


# --- the MCP registry ----------------------------------------------------------------------


def test_server_json_is_valid_against_the_registrys_schema() -> None:
    """tests/data/server.schema.json is the registry's published schema of 2025-12-11
    (its $id), less the example registry addresses of one field's annotations."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    assert SERVER_JSON["$schema"] == schema["$id"]
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(SERVER_JSON), key=lambda e: e.path
    )
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_schema_copy_rejects_what_the_registry_rejects() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    too_long = {**SERVER_JSON, "description": "x" * 101}
    no_slash = {**SERVER_JSON, "name": "kernel-mcp"}
    latest = json.loads(json.dumps(SERVER_JSON))
    latest["packages"][0]["version"] = "latest"
    for bad in (too_long, no_slash, latest):
        assert list(validator.iter_errors(bad))


def test_server_json_names_this_package_and_its_version() -> None:
    assert SERVER_JSON["version"] == __version__
    (package,) = SERVER_JSON["packages"]
    assert package["registryType"] == "pypi"
    assert package["identifier"] == PROJECT["name"]
    assert package["version"] == __version__
    assert package["transport"] == {"type": "stdio"}
    assert [arg["value"] for arg in package["packageArguments"]] == ["serve", "--stdio"]


def test_the_readme_carries_the_registrys_mcp_name_marker() -> None:
    """The registry proves a PyPI package is the server's by an ``mcp-name: NAME`` line in
    the package's description, which is the README."""
    assert PROJECT["readme"] == "README.md"
    assert f"<!-- mcp-name: {SERVER_JSON['name']} -->" in README


# --- the README -------------------------------------------------------------------------------


def test_the_quick_start_leads_with_the_one_line_install() -> None:
    quick = README[README.index("## Quick start") :]
    first = re.search(r"```sh\n(.*?)\n```", quick, re.S)
    assert first is not None
    assert first.group(1) == "uvx kernel-mcp config claude-desktop --uvx --write"
    assert "make serve" in quick and "make test" in quick


def test_the_install_section_has_pip_pipx_uvx_and_a_claude_desktop_block() -> None:
    install = README[README.index("## Install") : README.index("## Tools")]
    for line in (
        "uvx kernel-mcp serve --stdio",
        "pipx install kernel-mcp",
        "pip install kernel-mcp",
    ):
        assert line in install
    block = re.search(r"```json\n(.*?)\n```", install, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == {
        "mcpServers": {"kernel-mcp": {"command": "uvx", "args": ["kernel-mcp", "serve", "--stdio"]}}
    }
