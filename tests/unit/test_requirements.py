"""What may be asked to install: requirement specifiers only, and ``%pip install`` lines."""

from __future__ import annotations

import pytest

from kernel_mcp.packages import PackageRefused, parse_pip_install, parse_requirements
from kernel_mcp.packages.requirements import MAX_REQUIREMENTS, parse_requirement
from kernel_mcp.packages.uv import command


@pytest.mark.parametrize(
    ("given", "rendered"),
    [
        ("pandas", "pandas"),
        ("  scipy>=1.11  ", "scipy>=1.11"),
        ("Requests[socks,security] >=2.0, <3", "Requests[security,socks]<3,>=2.0"),
        ("numpy==2.*", "numpy==2.*"),
        ("torch==2.1.0+cpu", "torch==2.1.0+cpu"),
        ("typing-extensions~=4.0", "typing-extensions~=4.0"),
        ("zope.interface!=5.0", "zope.interface!=5.0"),
        (
            "tomli; python_version < '3.11' and sys_platform != \"win32\"",
            'tomli; python_version < "3.11" and sys_platform != "win32"',
        ),
        ("x86-64-helper (>=1.0)", "x86-64-helper>=1.0"),
    ],
)
def test_requirement_specifiers_are_accepted_and_rendered_by_packaging(
    given: str, rendered: str
) -> None:
    assert str(parse_requirement(given)) == rendered


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        ("-e .", "option"),
        ("-r requirements.txt", "option"),
        ("--index-url=http://127.0.0.1:1/simple", "option"),
        ("--extra-index-url http://127.0.0.1:1/simple", "option"),
        ("-i http://127.0.0.1:1/simple", "option"),
        ("--find-links /tmp", "option"),
        ("--no-binary :all:", "option"),
        ("--config-settings=x=y", "option"),
        ("pandas --index-url http://127.0.0.1:1/simple", "option"),
        ("pandas -i http://127.0.0.1:1/simple", "option"),
        ('name; os_name=="posix" --x', "option"),
        ("pandas\t--pre", "option"),
        ("git+https://example.invalid/repo.git", "vcs"),
        ("hg+https://example.invalid/repo", "vcs"),
        ("svn+svn://example.invalid/repo", "vcs"),
        ("bzr+lp:project", "vcs"),
        ("pkg @ git+https://example.invalid/repo.git", "vcs"),
        ("https://example.invalid/pkg-1.0-py3-none-any.whl", "url"),
        ("http://127.0.0.1:1/pkg.tar.gz", "url"),
        ("file:///tmp/pkg.whl", "url"),
        ("file:pkg", "url"),
        ("pkg @ https://example.invalid/pkg.whl", "direct_reference"),
        ("pkg@https://example.invalid/pkg.whl", "direct_reference"),
        ("pkg @ file:///tmp/pkg", "direct_reference"),
        ("./pkg", "path"),
        ("../pkg", "path"),
        ("/tmp/pkg", "path"),
        ("~/pkg", "path"),
        ("pkg/sub", "path"),
        ("C:\\pkg", "path"),
        ("pkg-1.0-py3-none-any.whl", "path"),
        ("pkg-1.0.tar.gz", "path"),
        ("pkg.zip", "path"),
        ("pandas\n--index-url http://127.0.0.1:1/simple", "option"),
        ("pandas\nnumpy", "character"),
        ("pandas\r", "character"),
        ("pandas\x00", "character"),
        ("pandas\u202e", "character"),
        ("pandas # comment", "character"),
        ("pandas; platform_release == '${HOME}'", "character"),
        ("pandas | true", "character"),
        ("pandas && true", "character"),
        ("pandas`id`", "character"),
        ("pandas:2", "character"),
        ("pandas>=", "invalid"),
        ("pandas[", "invalid"),
        ("pan das", "invalid"),
        ("pandas; not_a_marker == '1'", "invalid"),
        ("", "empty"),
        ("   ", "empty"),
        ("a" * 201, "too_long"),
    ],
)
def test_everything_but_a_specifier_is_refused_with_its_rule(given: str, rule: str) -> None:
    with pytest.raises(PackageRefused) as refused:
        parse_requirement(given)

    assert refused.value.rule == rule
    assert f"(rule: {rule})" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_refusal_quotes_what_was_given_shortened() -> None:
    with pytest.raises(PackageRefused) as refused:
        parse_requirement("--index-url=http://127.0.0.1:1/simple" + "x" * 100)

    assert "'--index-url=http://127.0.0.1:1/simple" in str(refused.value)
    assert "x" * 100 not in str(refused.value)


def test_a_list_needs_one_requirement_and_at_most_the_maximum() -> None:
    with pytest.raises(PackageRefused, match=r"rule: empty"):
        parse_requirements([])
    with pytest.raises(PackageRefused, match=r"rule: too_many"):
        parse_requirements(["pandas"] * (MAX_REQUIREMENTS + 1))
    assert len(parse_requirements(["pandas"] * MAX_REQUIREMENTS)) == MAX_REQUIREMENTS


def test_one_refused_item_refuses_the_whole_list() -> None:
    with pytest.raises(PackageRefused, match=r"rule: url"):
        parse_requirements(["pandas", "https://example.invalid/x.whl", "numpy"])


def test_requirements_reach_uv_after_the_end_of_its_options(tmp_path) -> None:
    argv = command(
        tmp_path / "uv",
        python=tmp_path / "python",
        target=tmp_path / "target",
        requirements=[str(r) for r in parse_requirements(["pandas>=2", "numpy"])],
        excludes=None,
        index_url="http://127.0.0.1:1/simple",
        upgrade=["pandas"],
    )

    end = argv.index("--")
    assert argv[end + 1 :] == ["pandas>=2", "numpy"]
    assert "--no-build" in argv[:end] and "--no-config" in argv[:end]
    assert argv[argv.index("--default-index") + 1] == "http://127.0.0.1:1/simple"
    assert argv[argv.index("--upgrade-package") + 1] == "pandas"


def test_pip_install_lines_give_their_requirements_and_upgrade() -> None:
    asked = parse_pip_install("install -q -U 'pandas>=2' seaborn --no-cache-dir")

    assert [str(r) for r in asked.requirements] == ["pandas>=2", "seaborn"]
    assert asked.upgrade is True
    assert asked.ignored == ("-q", "--no-cache-dir")
    assert asked.names == ["pandas", "seaborn"]
    assert parse_pip_install("install tqdm==4.66.0").upgrade is False


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("install -r requirements.txt", "option"),
        ("install -e .", "option"),
        ("install --index-url http://127.0.0.1:1/simple pandas", "option"),
        ("install --extra-index-url=http://127.0.0.1:1/simple pandas", "option"),
        ("install --target /tmp/x pandas", "option"),
        ("install --no-binary :all: pandas", "option"),
        ("install --pre pandas", "option"),
        ("install git+https://example.invalid/x.git", "vcs"),
        ("install ./local", "path"),
        ("install 'pkg @ https://example.invalid/pkg.whl'", "direct_reference"),
        ("install", "empty"),
        ("install 'unclosed", "invalid"),
        ("uninstall pandas", "pip_command"),
        ("list", "pip_command"),
        ("", "pip_command"),
    ],
)
def test_pip_install_lines_refuse_what_a_tool_call_would(line: str, rule: str) -> None:
    with pytest.raises(PackageRefused) as refused:
        parse_pip_install(line)

    assert refused.value.rule == rule
