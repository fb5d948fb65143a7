"""What the kernel environment and a session's folder leave unmet, and what an install
hands uv (pure functions: distributions are described here, nothing is installed)."""

from __future__ import annotations

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from kernel_mcp.packages import Distribution
from kernel_mcp.packages.dependencies import plan, unmet

MARKERS = {k: str(v) for k, v in default_environment().items()}


def dist(name: str, version: str, *requires: str) -> Distribution:
    return Distribution(name=name, version=Version(version), requires=requires)


def by_name(*dists: Distribution) -> dict[str, Distribution]:
    return {d.name: d for d in dists}


def texts(requirements: list[Requirement]) -> list[str]:
    return sorted(str(r) for r in requirements)


ENVIRONMENT = by_name(
    dist("numpy", "2.1.0"),
    dist(
        "pandas",
        "2.2.0",
        "numpy>=1.26",
        'openpyxl>=3.1; extra == "excel"',
        'pyarrow>=10; extra == "parquet"',
    ),
    dist("broken", "1.0", "missing-from-everywhere>=1"),
)


def test_what_the_environment_has_meets_a_new_packages_requirements() -> None:
    folder = by_name(dist("seaborn", "0.13.2", "pandas>=1.2", "numpy>=1.20,!=1.24.0"))

    assert unmet([Requirement("seaborn")], folder, ENVIRONMENT, MARKERS) == []


def test_a_version_the_environment_lacks_is_unmet() -> None:
    folder = by_name(dist("newthing", "1.0", "numpy>=2.5"))

    assert texts(unmet([Requirement("newthing")], folder, ENVIRONMENT, MARKERS)) == ["numpy>=2.5"]


def test_what_the_folder_has_shadows_the_environment() -> None:
    folder = by_name(dist("newthing", "1.0", "numpy>=2.5"), dist("numpy", "2.6.0"))

    assert unmet([Requirement("newthing")], folder, ENVIRONMENT, MARKERS) == []


def test_an_extra_of_an_environment_package_needs_its_own_requirements() -> None:
    left = unmet([Requirement("pandas[excel]")], {}, ENVIRONMENT, MARKERS)

    assert texts(left) == ["openpyxl>=3.1"]


def test_the_environments_own_inconsistencies_are_not_this_installs_business() -> None:
    assert unmet([Requirement("broken"), Requirement("pandas")], {}, ENVIRONMENT, MARKERS) == []


def test_requirements_of_every_folder_distribution_are_checked() -> None:
    folder = by_name(dist("earlier", "1.0", "numpy<2"))

    assert texts(unmet([], folder, ENVIRONMENT, MARKERS)) == ["numpy<2"]


def test_markers_are_evaluated_for_the_kernel_with_the_extras_reached() -> None:
    folder = by_name(
        dist(
            "thing",
            "1.0",
            'never-here>=1; sys_platform == "no-such-platform"',
            'fast-dep>=1; extra == "fast"',
        )
    )

    assert unmet([Requirement("thing")], folder, ENVIRONMENT, MARKERS) == []
    assert texts(unmet([Requirement("thing[fast]")], folder, ENVIRONMENT, MARKERS)) == [
        "fast-dep>=1"
    ]


def test_a_requirement_that_refers_to_itself_ends() -> None:
    folder = by_name(dist("loop", "1.0", 'loop[all]; extra == "x"', 'loop[x]; extra == "all"'))

    assert unmet([Requirement("loop[x]")], folder, ENVIRONMENT, MARKERS) == []


def test_a_plan_hands_uv_only_what_is_not_already_met() -> None:
    asked = [
        Requirement("pandas>=2"),
        Requirement("pandas<2"),
        Requirement("seaborn"),
        Requirement('pywin32; sys_platform == "no-such-platform"'),
    ]

    planned = plan(asked, {}, ENVIRONMENT, MARKERS)

    assert [str(r) for r in planned.install] == ["pandas<2", "seaborn"]
    assert planned.satisfied == ("pandas 2.2.0",)
    assert planned.skipped == ('pywin32; sys_platform == "no-such-platform"',)


def test_an_upgrade_or_a_folder_copy_goes_to_uv() -> None:
    folder = by_name(dist("numpy", "2.6.0"))

    assert [str(r) for r in plan([Requirement("numpy")], folder, ENVIRONMENT, MARKERS).install] == [
        "numpy"
    ]
    upgraded = plan([Requirement("pandas")], {}, ENVIRONMENT, MARKERS, upgrade=True)
    assert [str(r) for r in upgraded.install] == ["pandas"]
