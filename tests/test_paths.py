"""The path guard, specified on real folders: files, symlinks, FIFOs, devices.

A name is accepted only when its real path is a regular file inside the real
projects folder, with an allowed suffix, under the size limit. Refusals name
their rule, quote only the caller's own name, and say nothing about what
exists outside the folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from kernel_mcp.errors import FileNotFound, InvalidArgument, PathRefused
from kernel_mcp.paths import (
    MAX_LISTED_FILES,
    ProjectFile,
    list_project_files,
    read_project_file,
    validate_name,
)

MAX_BYTES = 1000
SECRET = "TOP-SECRET-CONTENT"
OK_SOURCE = "print('ok')\n"


@dataclass(frozen=True)
class Tree:
    root: Path
    """The projects folder."""
    outside: Path
    """A sibling folder the guard must never reveal."""


def build_tree(base: Path) -> Tree:
    """A projects folder with every kind of entry the guard has a rule for.

    base/
      x.py                      outside, reachable by '..'
      outside/secret.py         outside, target of escaping symlinks
      projects/
        ok.py  pkg/mod.py  UPPER.PY  nb.ipynb  exact.py (MAX_BYTES bytes)
        notes.txt  big.py (over MAX_BYTES)  latin1.py (not UTF-8)
        d.py/ (directory)  f.py (FIFO)
        escape.py -> ../outside/secret.py     escape_dir -> ../outside
        dangling.py -> ../outside/missing.py  inner_link.py -> ok.py
        link.txt -> ok.py  txt_link.py -> notes.txt  pkg_link -> pkg
        .hidden/h.py  pkg/.hid.py
    """
    root = base / "projects"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.py").write_text(f"print('{SECRET}')\n")
    (base / "x.py").write_text(f"print('{SECRET}')\n")

    (root / "ok.py").write_text(OK_SOURCE)
    (root / "pkg").mkdir()
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "pkg" / ".hid.py").write_text("hidden = True\n")
    (root / "UPPER.PY").write_text("upper = True\n")
    (root / "nb.ipynb").write_text("{}")
    (root / "exact.py").write_text("#" * (MAX_BYTES - 1) + "\n")
    (root / "notes.txt").write_text(SECRET)
    (root / "big.py").write_text(SECRET * (MAX_BYTES // len(SECRET) + 1))
    (root / "latin1.py").write_bytes(b"s = '\xe9t\xe9'  # " + SECRET.encode() + b"\n")
    (root / "d.py").mkdir()
    os.mkfifo(root / "f.py")
    (root / "escape.py").symlink_to(outside / "secret.py")
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "dangling.py").symlink_to(outside / "missing.py")
    (root / "inner_link.py").symlink_to("ok.py")
    (root / "link.txt").symlink_to("ok.py")
    (root / "txt_link.py").symlink_to("notes.txt")
    (root / "pkg_link").symlink_to("pkg", target_is_directory=True)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.py").write_text("hidden = True\n")
    return Tree(root=root, outside=outside)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(tmp_path)


def read(tree: Tree, name: str, **kwargs: object) -> ProjectFile:
    kwargs.setdefault("max_bytes", MAX_BYTES)
    return read_project_file(tree.root, name, **kwargs)  # type: ignore[arg-type]


# --- refusals ---------------------------------------------------------------

Name = Callable[[Tree], str]

REFUSED: list[tuple[str, Name, str]] = [
    ("dotdot", lambda t: "../x.py", "path_traversal"),
    ("dotdot_nested", lambda t: "sub/../../x.py", "path_traversal"),
    ("dotdot_deep", lambda t: "pkg/../../outside/secret.py", "path_traversal"),
    ("absolute_outside", lambda t: str(t.outside / "secret.py"), "outside_projects_dir"),
    ("absolute_etc", lambda t: "/etc/passwd", "outside_projects_dir"),
    ("symlink_file_out", lambda t: "escape.py", "symlink_escape"),
    ("symlink_dir_out", lambda t: "escape_dir/secret.py", "symlink_escape"),
    ("nul_byte", lambda t: "ok.py\x00.py", "nul_byte"),
    ("directory", lambda t: "d.py", "not_regular_file"),
    ("fifo", lambda t: "f.py", "not_regular_file"),
    ("too_large", lambda t: "big.py", "too_large"),
    ("not_py", lambda t: "notes.txt", "file_type"),
    ("no_suffix", lambda t: "pkg", "file_type"),
    ("root_itself", lambda t: ".", "file_type"),
    ("link_name_not_py", lambda t: "link.txt", "file_type"),
    ("link_target_not_py", lambda t: "txt_link.py", "file_type"),
    ("empty", lambda t: "", "empty_name"),
    ("blank", lambda t: "   ", "empty_name"),
    ("lone_surrogate", lambda t: "\ud800.py", "unencodable_name"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("make_name", "rule"),
    [pytest.param(make, rule, id=case) for case, make, rule in REFUSED],
)
def test_refused_names_name_their_rule(tree: Tree, make_name: Name, rule: str) -> None:
    name = make_name(tree)
    with pytest.raises(PathRefused) as caught:
        read(tree, name)
    assert caught.value.rule == rule
    message = str(caught.value)
    assert f"(rule: {rule})" in message
    assert SECRET not in message


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_opening_it(tree: Tree) -> None:
    # Opening a FIFO for reading blocks until a writer appears; the guard must
    # decide from stat alone. The timeout marker turns a hang into a failure.
    fifo = tree.root / "f.py"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(PathRefused) as caught:
        read(tree, "f.py")
    assert caught.value.rule == "not_regular_file"
    with pytest.raises(PathRefused):
        read(tree, str(fifo))


def test_character_device_is_refused(tree: Tree) -> None:
    device = tree.root / "dev.py"
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    with pytest.raises(PathRefused) as caught:
        read(tree, "dev.py")
    assert caught.value.rule == "not_regular_file"


def test_symlink_to_a_device_outside_is_refused(tree: Tree) -> None:
    (tree.root / "null.py").symlink_to("/dev/null")
    with pytest.raises(PathRefused) as caught:
        read(tree, "null.py")
    assert caught.value.rule == "symlink_escape"


def test_file_of_exactly_max_bytes_is_accepted_one_more_is_not(tree: Tree) -> None:
    assert len(read(tree, "exact.py").source) == MAX_BYTES
    with pytest.raises(PathRefused) as caught:
        read(tree, "exact.py", max_bytes=MAX_BYTES - 1)
    assert caught.value.rule == "too_large"
    assert f"{MAX_BYTES - 1}-byte limit" in str(caught.value)


def test_not_utf8_is_invalid_argument_without_content(tree: Tree) -> None:
    with pytest.raises(InvalidArgument) as caught:
        read(tree, "latin1.py")
    assert "latin1.py" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_suffixes_decide_the_file_type(tree: Tree) -> None:
    assert read(tree, "nb.ipynb", suffixes=(".ipynb",)).source == "{}"
    with pytest.raises(PathRefused) as caught:
        read(tree, "ok.py", suffixes=(".ipynb",))
    assert caught.value.rule == "file_type"
    assert ".ipynb" in str(caught.value)


def test_long_name_is_shortened_in_the_message(tree: Tree) -> None:
    name = "a" * 500 + ".txt"
    with pytest.raises(PathRefused) as caught:
        read(tree, name)
    assert name not in str(caught.value)
    assert "a" * 200 + "…" in str(caught.value)


# --- missing files ------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing.py", "pkg/missing.py", "nodir/missing.py"])
def test_missing_file_inside_is_file_not_found_without_the_real_path(tree: Tree, name: str) -> None:
    with pytest.raises(FileNotFound) as caught:
        read(tree, name)
    message = str(caught.value)
    assert name in message
    assert str(tree.root) not in message
    assert os.path.realpath(tree.root) not in message
    assert str(tree.root.parent) not in message


@pytest.mark.parametrize(
    ("make_name", "rule"),
    [
        pytest.param(lambda t: "../nothere.py", "path_traversal", id="dotdot"),
        pytest.param(
            lambda t: str(t.outside / "nothere.py"), "outside_projects_dir", id="absolute"
        ),
        pytest.param(lambda t: "dangling.py", "symlink_escape", id="dangling_symlink"),
        pytest.param(lambda t: "escape_dir/nothere.py", "symlink_escape", id="symlinked_dir"),
    ],
)
def test_missing_file_outside_is_refused_not_reported_missing(
    tree: Tree, make_name: Name, rule: str
) -> None:
    with pytest.raises(PathRefused) as caught:
        read(tree, make_name(tree))
    assert caught.value.rule == rule


def test_existing_and_missing_outside_files_are_indistinguishable(tree: Tree) -> None:
    assert (tree.root.parent / "x.py").is_file()
    assert not (tree.root.parent / "y.py").exists()
    errors = []
    for name in ("../x.py", "../y.py"):
        with pytest.raises(PathRefused) as caught:
            read(tree, name)
        errors.append((caught.value.rule, str(caught.value).replace(name, "NAME")))
    assert errors[0] == errors[1]


# --- acceptance -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_name", "relative"),
    [
        pytest.param(lambda t: "ok.py", "ok.py", id="relative"),
        pytest.param(lambda t: "./ok.py", "ok.py", id="dot_prefix"),
        pytest.param(lambda t: "pkg/mod.py", "pkg/mod.py", id="nested"),
        pytest.param(lambda t: "pkg/../ok.py", "ok.py", id="dotdot_that_stays_inside"),
        pytest.param(lambda t: "pkg//mod.py", "pkg/mod.py", id="double_slash"),
        pytest.param(lambda t: str(t.root / "ok.py"), "ok.py", id="absolute_inside"),
        pytest.param(lambda t: str(t.root / "pkg" / "mod.py"), "pkg/mod.py", id="absolute_nested"),
        pytest.param(lambda t: "inner_link.py", "ok.py", id="symlink_inside"),
        pytest.param(lambda t: "pkg_link/mod.py", "pkg/mod.py", id="symlinked_dir_inside"),
        pytest.param(lambda t: "UPPER.PY", "UPPER.PY", id="suffix_case"),
    ],
)
def test_accepted_names(tree: Tree, make_name: Name, relative: str) -> None:
    found = read(tree, make_name(tree))
    real_file = Path(os.path.realpath(tree.root / relative))
    assert found.relative == relative
    assert found.path == real_file
    assert found.path.is_absolute()
    assert found.source == real_file.read_text()


def test_accepted_file_carries_its_source(tree: Tree) -> None:
    found = read(tree, "ok.py")
    assert found == ProjectFile(
        path=Path(os.path.realpath(tree.root / "ok.py")), relative="ok.py", source=OK_SOURCE
    )


def test_root_given_through_a_symlink(tree: Tree) -> None:
    alias = tree.root.parent / "alias"
    alias.symlink_to(tree.root, target_is_directory=True)
    by_relative = read_project_file(alias, "pkg/mod.py", max_bytes=MAX_BYTES)
    by_alias_path = read_project_file(alias, str(alias / "pkg" / "mod.py"), max_bytes=MAX_BYTES)
    by_real_path = read_project_file(alias, str(tree.root / "pkg/mod.py"), max_bytes=MAX_BYTES)
    assert by_relative == by_alias_path == by_real_path
    assert by_relative.relative == "pkg/mod.py"
    assert by_relative.path == Path(os.path.realpath(tree.root / "pkg" / "mod.py"))
    with pytest.raises(PathRefused) as caught:
        read_project_file(alias, str(alias / ".." / "x.py"), max_bytes=MAX_BYTES)
    assert caught.value.rule == "outside_projects_dir"


def test_sibling_folder_sharing_the_prefix_is_outside(tree: Tree) -> None:
    # "/base/projects-evil/x.py" starts with "/base/projects" but is not inside it.
    evil = tree.root.parent / (tree.root.name + "-evil")
    evil.mkdir()
    (evil / "x.py").write_text(SECRET)
    with pytest.raises(PathRefused) as caught:
        read(tree, str(evil / "x.py"))
    assert caught.value.rule == "outside_projects_dir"
    with pytest.raises(PathRefused) as caught:
        read(tree, f"../{evil.name}/x.py")
    assert caught.value.rule == "path_traversal"


# --- property: nothing outside, nothing unexpected ----------------------------

FOLDERS = st.sampled_from(
    ["..", ".", "", "a/..", "pkg/..", "pkg_link/..", "a", "pkg", "escape_dir", "projects"]
)
LEAVES = st.sampled_from(
    [
        "",
        "ok.py",
        "pkg/mod.py",
        "inner_link.py",
        "escape.py",
        "secret.py",
        "x.py",
        "f.py",
        "d.py",
        "dangling.py",
        "big.py",
        "txt_link.py",
        "\x00",
        "\ud800",
        "~",
        " ",
        "a" * 300,
        "..",
    ]
)


@st.composite
def path_names(draw: st.DrawFn) -> str:
    lead = draw(st.sampled_from(["", "./", "/", "ROOT/", "ROOT/../"]))
    parts = draw(st.lists(FOLDERS, max_size=3))
    return lead + "/".join([*parts, draw(LEAVES)])


@pytest.mark.timeout(120)
@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(), st.text(st.characters(codec=None)), path_names(), path_names()))
@example(name="ok.py")
@example(name="../projects/ok.py")
@example(name="ROOT/pkg/../inner_link.py")
@example(name="pkg_link/mod.py")
@example(name="ROOT/../outside/secret.py")
@example(name="escape_dir/../ok.py")
def test_any_name_is_inside_or_refused(tree: Tree, name: str) -> None:
    name = name.replace("ROOT", str(tree.root))
    real_root = os.path.realpath(tree.root)
    try:
        found = read(tree, name)
    except (PathRefused, FileNotFound, InvalidArgument) as exc:
        event(type(exc).__name__)
        return
    event("accepted")
    assert str(found.path).startswith(real_root + os.sep)
    assert found.path == Path(os.path.realpath(found.path))
    assert found.path.is_file()
    assert found.source == found.path.read_text()
    assert (Path(real_root) / found.relative) == found.path


# --- listing ------------------------------------------------------------------


def test_list_default_pattern_is_sorted_relative_and_guarded(tree: Tree) -> None:
    # Left out: escape.py and dangling.py (real path outside), escape_dir/ (a
    # symlinked folder outside), d.py (a folder), f.py (a FIFO), .hidden/h.py and
    # pkg/.hid.py (hidden), UPPER.PY (the glob is case-sensitive).
    assert list_project_files(tree.root) == [
        "big.py",
        "exact.py",
        "inner_link.py",
        "latin1.py",
        "ok.py",
        "pkg/mod.py",
        "txt_link.py",
    ]


def test_list_other_patterns(tree: Tree) -> None:
    assert list_project_files(tree.root, "*.py") == [
        "big.py",
        "exact.py",
        "inner_link.py",
        "latin1.py",
        "ok.py",
        "txt_link.py",
    ]
    assert list_project_files(tree.root, "**/*.txt") == ["link.txt", "notes.txt"]
    assert list_project_files(tree.root, "**/*.ipynb") == ["nb.ipynb"]
    assert list_project_files(tree.root, "pkg_link/*.py") == ["pkg_link/mod.py"]
    assert list_project_files(tree.root, "nothing/*.py") == []


def test_list_skips_what_leaves_the_folder_even_when_asked_for_it(tree: Tree) -> None:
    assert list_project_files(tree.root, "escape_dir/*.py") == []
    assert list_project_files(tree.root, "escape.py") == []
    assert list_project_files(tree.root, "dangling.py") == []
    assert list_project_files(tree.root, ".hidden/*.py") == []
    assert list_project_files(tree.root, "pkg/.hid.py") == []


def test_list_through_a_symlinked_root(tree: Tree) -> None:
    alias = tree.root.parent / "alias"
    alias.symlink_to(tree.root, target_is_directory=True)
    assert list_project_files(alias) == list_project_files(tree.root)


@pytest.mark.parametrize(
    "pattern",
    ["/etc/*.py", "\\etc\\*.py", "../*.py", "pkg/../../*.py", "**/../*.py", "..", "", "a\x00.py"],
)
def test_list_refuses_absolute_and_climbing_patterns(tree: Tree, pattern: str) -> None:
    with pytest.raises(InvalidArgument):
        list_project_files(tree.root, pattern)


def test_list_stops_at_the_cap(tmp_path: Path) -> None:
    for index in range(MAX_LISTED_FILES + 5):
        (tmp_path / f"f{index:05d}.py").touch()
    listed = list_project_files(tmp_path)
    assert len(listed) == MAX_LISTED_FILES
    assert listed == sorted(listed)
    assert len(set(listed)) == MAX_LISTED_FILES


# --- names of sessions and notebooks --------------------------------------------


@pytest.mark.parametrize("name", ["a", "run-1.v2_x", "A" * 64, "0", "x.ipynb", "a.b-c_d"])
def test_validate_name_accepts(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/b",
        "a\\b",
        ".hidden",
        "",
        "a" * 65,
        "a..b",
        "-a",
        "_a",
        "a b",
        "a\n",
        "\na",
        "a\x00",
        "é",
        "/abs",
    ],
)
def test_validate_name_refuses(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_name(name)
    assert "Invalid name" in str(caught.value)


@pytest.mark.parametrize("value", [None, 5, b"abc"])
def test_validate_name_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_name(value)  # type: ignore[arg-type]
