"""The path guard, specified on real folders: files, symlinks, FIFOs, devices.

A name is accepted only when its real path is a regular file inside the real
projects folder, with an allowed suffix, under the size limit, with one hard
link, and when the file opened is the one checked (a folder swapped for a
symlink mid-check is caught). Refusals name their rule, quote only the caller's
own name, and say nothing about what exists outside the folder. The hostile
corpus (tests/corpus/paths.py) runs here case by case. Listing is one bounded
walk: capped in entries, results and time, cancellable, and indifferent to the
shape of the pattern.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import stat
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from kernel_mcp.errors import FileNotFound, InvalidArgument, PathRefused
from kernel_mcp.files.guard import ProjectFile, open_dir_beneath, read_project_file, shown_name
from kernel_mcp.files.listing import (
    MAX_LISTED_FILES,
    MAX_PATTERN_CHARS,
    MAX_WALK_DEPTH,
    FileListing,
    list_project_files,
)
from kernel_mcp.files.names import validate_name
from kernel_mcp.files.write import write_project_file
from tests.corpus import paths as corpus

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


def listed(root: Path, pattern: str = "**/*.py", **kwargs: object) -> list[str]:
    """The files of a listing that must be complete."""
    listing = list_project_files(root, pattern, **kwargs)  # type: ignore[arg-type]
    assert not listing.truncated, listing.reason
    assert listing.reason is None
    return listing.files


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


# --- the check-then-open race -------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(libc: ctypes.CDLL, first: Path, second: Path) -> bool:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE); False where unsupported."""
    result = libc.renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_folder_swapped_for_an_outside_symlink_never_runs_the_outside_file(
    tmp_path: Path, swap: str
) -> None:
    # projects/d flips between a real folder (f.py prints "inside") and a symlink to
    # an outside folder (f.py prints the secret) while the guard reads d/f.py. The
    # old guard checked realpath, then opened by name: 321 and 395 of 3,000 reads
    # returned the outside file (exchange and rename swaps).
    root, out, spare = tmp_path / "projects", tmp_path / "outside", tmp_path / "spare"
    for folder in (root, out, spare):
        folder.mkdir()
    (out / "f.py").write_text(f"print({SECRET!r})\n")
    (root / "d").mkdir()
    (root / "d" / "f.py").write_text("print('inside')\n")
    (spare / "d").symlink_to(out, target_is_directory=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if swap == "exchange" and (
        not hasattr(libc, "renameat2") or not _exchange(libc, root / "d", spare / "d")
    ):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")

    stop = threading.Event()
    swaps = 0
    failure: list[BaseException] = []

    def swapper() -> None:
        nonlocal swaps
        try:
            while not stop.is_set():
                if swap == "exchange":
                    _exchange(libc, root / "d", spare / "d")
                else:
                    os.rename(root / "d", spare / "tmp")
                    os.rename(spare / "d", root / "d")
                    os.rename(spare / "tmp", spare / "d")
                swaps += 1
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    outcomes: Counter[str] = Counter()
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for _ in range(3000):
            try:
                found = read_project_file(root, "d/f.py", max_bytes=MAX_BYTES)
            except PathRefused as exc:
                outcomes[exc.rule] += 1
                message = str(exc)
            except FileNotFound as exc:
                outcomes["not_found"] += 1
                message = str(exc)
            else:
                assert SECRET not in found.source
                assert found.source == "print('inside')\n"
                assert found.relative == "d/f.py"
                outcomes["ok"] += 1
                continue
            assert str(tmp_path) not in message
            assert os.path.realpath(tmp_path) not in message
            assert "'d/f.py'" in message
    finally:
        stop.set()
        thread.join()
    assert not failure, failure
    # A race was run: the swapper moved, and both kinds of answer came back.
    assert swaps > 100
    assert outcomes["ok"] > 0
    assert set(outcomes) - {"ok"}, outcomes
    assert set(outcomes) <= {"ok", "changed_during_check", "symlink_escape", "not_found"}, outcomes


def test_open_dir_beneath_refuses_a_symlinked_folder_in_any_position(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "a" / "link").symlink_to("b", target_is_directory=True)
    (tmp_path / "top").symlink_to("a", target_is_directory=True)
    (tmp_path / "a" / "file").write_text("")
    real = os.path.realpath(tmp_path)
    fd = open_dir_beneath(real, ["a", "b"])
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "a" / "b"))
    finally:
        os.close(fd)
    fd = open_dir_beneath(real, [])
    os.close(fd)
    for parts, code in [
        (["top", "b"], errno.ELOOP),
        (["a", "link"], errno.ELOOP),
        (["a", "file"], errno.ENOTDIR),
        (["a", "missing"], errno.ENOENT),
    ]:
        with pytest.raises(OSError) as caught:
            open_dir_beneath(real, parts)
        assert caught.value.errno == code, parts
        assert caught.value.filename is None
        assert str(tmp_path) not in str(caught.value)
    for bad in (["..", "a"], ["a/b"], [""], ["."], ["a\x00"]):
        with pytest.raises(ValueError):
            open_dir_beneath(real, bad)


def test_no_descriptor_is_left_open(tree: Tree) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for name in ("ok.py", "pkg/mod.py", "escape.py", "f.py", "d.py", "missing.py", "big.py"):
        with contextlib.suppress(PathRefused, FileNotFound):
            read(tree, name)
    assert len(os.listdir("/proc/self/fd")) == before


# --- hard links -----------------------------------------------------------------------


def test_hardlink_to_an_outside_file_is_refused_and_names_the_setting(tree: Tree) -> None:
    os.link(tree.outside / "secret.py", tree.root / "hard.py")
    with pytest.raises(PathRefused) as caught:
        read(tree, "hard.py")
    assert caught.value.rule == "hardlink"
    message = str(caught.value)
    assert "KERNEL_MCP_ALLOW_HARDLINKS" in message
    assert "2 hard links" in message
    assert SECRET not in message
    assert str(tree.outside) not in message


def test_hardlink_is_refused_under_both_names_and_allowed_when_asked(tree: Tree) -> None:
    os.link(tree.root / "ok.py", tree.root / "twin.py")
    for name in ("ok.py", "twin.py"):
        with pytest.raises(PathRefused) as caught:
            read(tree, name)
        assert caught.value.rule == "hardlink"
        assert read(tree, name, allow_hardlinks=True).source == OK_SOURCE
    os.unlink(tree.root / "twin.py")
    assert read(tree, "ok.py").source == OK_SOURCE


def test_hardlink_rule_comes_before_the_size_of_the_linked_file(tree: Tree) -> None:
    # A size refusal would describe the outside file; the link refusal does not.
    big_outside = tree.outside / "big.py"
    big_outside.write_text("#" * (MAX_BYTES * 2))
    os.link(big_outside, tree.root / "hard_big.py")
    with pytest.raises(PathRefused) as caught:
        read(tree, "hard_big.py")
    assert caught.value.rule == "hardlink"
    with pytest.raises(PathRefused) as caught:
        read(tree, "hard_big.py", allow_hardlinks=True)
    assert caught.value.rule == "too_large"


# --- byte-order mark ------------------------------------------------------------------


def test_one_leading_utf8_bom_is_dropped(tree: Tree) -> None:
    # `python bom.py` runs such a file; passing U+FEFF on to the kernel is a SyntaxError.
    (tree.root / "bom.py").write_bytes(b"\xef\xbb\xbfprint('ok')\n")
    assert read(tree, "bom.py").source == OK_SOURCE
    compile(read(tree, "bom.py").source, "bom.py", "exec")
    (tree.root / "bom2.py").write_bytes(b"\xef\xbb\xbf\xef\xbb\xbfx = 1\n")
    assert read(tree, "bom2.py").source == "\ufeffx = 1\n"
    (tree.root / "mid.py").write_bytes(b"x = '\xef\xbb\xbf'\n")
    assert read(tree, "mid.py").source == "x = '\ufeff'\n"


def test_bom_is_dropped_from_notebooks_too(tree: Tree) -> None:
    (tree.root / "bom.ipynb").write_bytes(b'\xef\xbb\xbf{"cells": []}')
    source = read(tree, "bom.ipynb", suffixes=(".ipynb",)).source
    assert json.loads(source) == {"cells": []}


# --- the hostile corpus ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", corpus.CASES, ids=[case.id for case in corpus.CASES])
def test_hostile_path_corpus(tmp_path: Path, case: corpus.PathCase) -> None:
    try:
        name = case.build(tmp_path)
    except corpus.CaseUnavailable as exc:
        pytest.skip(str(exc))
    root = corpus.projects(tmp_path)
    message: str | None = None
    try:
        found = read_project_file(root, name, max_bytes=corpus.MAX_BYTES)
    except PathRefused as exc:
        outcome, message = exc.rule, str(exc)
        assert f"(rule: {exc.rule})" in message
    except FileNotFound as exc:
        outcome, message = corpus.NOT_FOUND, str(exc)
    except InvalidArgument as exc:
        outcome, message = corpus.NOT_TEXT, str(exc)
    else:
        outcome = corpus.OK
        assert corpus.SECRET not in found.source
        assert found.source == case.source
        real_root = os.path.realpath(root)
        assert str(found.path).startswith(real_root + os.sep)
        # The relative name is the real path's, shown escaped where it is not UTF-8.
        assert found.relative == shown_name(os.path.relpath(found.path, real_root))
        found.relative.encode("utf-8")
    assert outcome == case.expected, message
    if message is not None:
        assert corpus.SECRET not in message
        for absolute in {str(tmp_path), os.path.realpath(tmp_path)}:
            if absolute not in name:
                assert absolute not in message, message


def test_corpus_is_broad() -> None:
    # A guard for the table itself: every outcome and many rules are exercised.
    expected = Counter(case.expected for case in corpus.CASES)
    assert len(corpus.CASES) >= 150
    for outcome in (
        corpus.OK,
        corpus.NOT_FOUND,
        corpus.NOT_TEXT,
        "path_traversal",
        "outside_projects_dir",
        "symlink_escape",
        "hardlink",
        "not_regular_file",
        "file_type",
        "too_large",
        "unreadable",
        "nul_byte",
        "empty_name",
        "unencodable_name",
    ):
        assert expected[outcome] > 0, outcome


# --- listing ------------------------------------------------------------------


def test_list_default_pattern_is_sorted_relative_and_guarded(tree: Tree) -> None:
    # Left out: escape.py and dangling.py (real path outside), escape_dir/ (a
    # symlinked folder outside), d.py (a folder), f.py (a FIFO), .hidden/h.py and
    # pkg/.hid.py (hidden), UPPER.PY (the glob is case-sensitive).
    assert listed(tree.root) == [
        "big.py",
        "exact.py",
        "inner_link.py",
        "latin1.py",
        "ok.py",
        "pkg/mod.py",
        "txt_link.py",
    ]


def test_list_other_patterns(tree: Tree) -> None:
    assert listed(tree.root, "*.py") == [
        "big.py",
        "exact.py",
        "inner_link.py",
        "latin1.py",
        "ok.py",
        "txt_link.py",
    ]
    assert listed(tree.root, "**/*.txt") == ["link.txt", "notes.txt"]
    assert listed(tree.root, "**/*.ipynb") == ["nb.ipynb"]
    # A symlinked folder is not entered, even when named: pkg/mod.py is listed by
    # its real path instead.
    assert listed(tree.root, "pkg_link/*.py") == []
    assert listed(tree.root, "pkg/*.py") == ["pkg/mod.py"]
    assert listed(tree.root, "nothing/*.py") == []


def test_list_skips_what_leaves_the_folder_even_when_asked_for_it(tree: Tree) -> None:
    assert listed(tree.root, "escape_dir/*.py") == []
    assert listed(tree.root, "escape.py") == []
    assert listed(tree.root, "dangling.py") == []
    assert listed(tree.root, ".hidden/*.py") == []
    assert listed(tree.root, "pkg/.hid.py") == []


def test_list_through_a_symlinked_root(tree: Tree) -> None:
    alias = tree.root.parent / "alias"
    alias.symlink_to(tree.root, target_is_directory=True)
    assert listed(alias) == listed(tree.root)


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
    listing = list_project_files(tmp_path)
    assert listing.files == [f"f{index:05d}.py" for index in range(MAX_LISTED_FILES)]
    assert listing.truncated
    assert listing.reason == f"more than {MAX_LISTED_FILES} matches"


def _touch(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def _chain(root: Path, depth: int, name: str = "d") -> list[str]:
    """``depth`` nested folders with a .py file at each level; returns the files."""
    files = []
    for level in range(depth + 1):
        rel = "/".join([name] * level + [f"f{level}.py"])
        _touch(root, rel)
        files.append(rel)
    return sorted(files)


@pytest.mark.timeout(60)
def test_repeated_double_star_on_a_deep_tree_answers(tmp_path: Path) -> None:
    # Path.glob is exponential in repeated '**': on this tree the old listing never
    # answered. The timeout marker is a hang guard, not a speed requirement.
    files = _chain(tmp_path, 40)
    assert listed(tmp_path, "**/**/**/**/**/**/*.py") == files
    assert listed(tmp_path, "**/d/**/d/**/d/**/f40.py") == ["/".join(["d"] * 40 + ["f40.py"])]
    # Six '*' folders at least, each '**' around them free to take any number.
    at_least_six = [f for f in files if f.count("/") >= 6]
    assert listed(tmp_path, "**/*/**/*/**/*/**/*/**/*/**/*/**/*.py") == at_least_six


@pytest.mark.timeout(60)
def test_star_runs_do_not_backtrack(tmp_path: Path) -> None:
    _touch(tmp_path, "a" * 200 + ".py")
    assert listed(tmp_path, "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b.py") == []
    assert listed(tmp_path, "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*.py") == ["a" * 200 + ".py"]


def test_walk_is_bounded_in_entries(tmp_path: Path) -> None:
    for index in range(50):
        _touch(tmp_path, f"f{index:02d}.py")
    listing = list_project_files(tmp_path, "*.py", max_entries=10)
    assert listing.truncated
    assert listing.reason == "walk stopped after 10 entries"
    assert len(listing.files) <= 10
    assert set(listing.files) <= {f"f{index:02d}.py" for index in range(50)}
    full = list_project_files(tmp_path, "*.py", max_entries=50)
    assert not full.truncated and len(full.files) == 50


def test_walk_is_bounded_in_results(tmp_path: Path) -> None:
    for rel in ("b.py", "a/z.py", "a.py", "c/d/e.py", "ab.py"):
        _touch(tmp_path, rel)
    everything = sorted(["b.py", "a/z.py", "a.py", "c/d/e.py", "ab.py"])
    listing = list_project_files(tmp_path, max_results=3)
    assert listing.files == everything[:3]
    assert listing.truncated
    assert listing.reason == "more than 3 matches"
    exact = list_project_files(tmp_path, max_results=5)
    assert exact.files == everything
    assert not exact.truncated and exact.reason is None


def test_walk_is_bounded_in_time(tmp_path: Path) -> None:
    for index in range(20):
        _touch(tmp_path, f"d{index}/f.py")
    listing = list_project_files(tmp_path, time_budget_s=0.0)
    assert listing.truncated
    assert listing.reason == "walk stopped after 0 s"


class _SetAfter(threading.Event):
    """An event that reports itself set from its ``calls``-th check on."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.calls or super().is_set()


def test_a_set_cancel_event_stops_the_walk(tmp_path: Path) -> None:
    for index in range(30):
        _touch(tmp_path, f"d{index:02d}/f.py")
    cancel = threading.Event()
    cancel.set()
    listing = list_project_files(tmp_path, cancel=cancel)
    assert listing == FileListing(files=[], truncated=True, reason="cancelled")

    midway = _SetAfter(5)
    listing = list_project_files(tmp_path, cancel=midway)
    assert listing.truncated and listing.reason == "cancelled"
    assert 0 < len(listing.files) < 30
    assert listing.files == [f"d{index:02d}/f.py" for index in range(len(listing.files))]
    assert midway.checks == 5  # it stopped at once, not at the end


def test_walk_never_enters_symlinked_folders(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    out = tmp_path / "outside"
    _touch(out, "secret.py")
    _touch(root, "pkg/mod.py")
    (root / "loop").symlink_to(".", target_is_directory=True)
    (root / "pkg" / "up").symlink_to("..", target_is_directory=True)
    (root / "out").symlink_to(out, target_is_directory=True)
    (root / "inner.py").symlink_to("pkg/mod.py")
    (root / "outer.py").symlink_to(out / "secret.py")
    (root / "dirlink.py").symlink_to("pkg", target_is_directory=True)
    assert listed(root) == ["inner.py", "pkg/mod.py"]
    assert listed(root, "loop/**/*.py") == []
    assert listed(root, "out/*.py") == []
    assert listed(root, "**") == ["inner.py", "pkg/mod.py"]


def test_walk_skips_hidden_and_special_entries(tmp_path: Path) -> None:
    _touch(tmp_path, "a.py")
    _touch(tmp_path, ".git/x.py")
    _touch(tmp_path, "pkg/.cache/y.py")
    _touch(tmp_path, "pkg/.z.py")
    os.mkfifo(tmp_path / "fifo.py")
    (tmp_path / "dir.py").mkdir()
    assert listed(tmp_path) == ["a.py"]
    assert listed(tmp_path, "**/*") == ["a.py"]
    assert listed(tmp_path, ".git/*.py") == []
    assert listed(tmp_path, "pkg/.z.py") == []


def _bytes_touch(root: Path, rel: bytes) -> None:
    """A file whose name may hold bytes that are not UTF-8 (as a kernel can make one)."""
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"print('x')\n")


def test_names_that_are_not_utf8_are_left_out_and_counted(tmp_path: Path) -> None:
    _touch(tmp_path, "good.py")
    _touch(tmp_path, "pkg/ok.py")
    _bytes_touch(tmp_path, b"bad\xff.py")
    _bytes_touch(tmp_path, b"bad\xfe.txt")
    _bytes_touch(tmp_path, b"pkg/\xe9t\xe9.py")  # latin-1 'ete'
    _bytes_touch(tmp_path, b"dir\xff/inner.py")
    listing = list_project_files(tmp_path, "**/*.py")
    assert listing.files == ["good.py", "pkg/ok.py"]
    assert not listing.truncated and listing.reason is None
    # bad\xff.py, pkg/\xe9t\xe9.py and the folder dir\xff (not entered: its files are
    # no more nameable than it is).
    assert listing.not_utf8 == 3
    # Only names the pattern matches are counted.
    assert list_project_files(tmp_path, "*.txt").not_utf8 == 1
    assert list_project_files(tmp_path, "pkg/*.py").not_utf8 == 1
    assert list_project_files(tmp_path, "good.py").not_utf8 == 0
    # Whatever the result holds can be sent as JSON text.
    json.dumps(listing.files).encode("utf-8")


def test_a_file_read_under_a_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    _bytes_touch(tmp_path, b"bad\xff.py")
    project = read_project_file(tmp_path, "bad\udcff.py", max_bytes=MAX_BYTES)
    assert project.relative == "bad\\xff.py" and project.source == "print('x')\n"
    project.relative.encode("utf-8")
    # Behind a link whose own name is UTF-8 too.
    (tmp_path / "link.py").symlink_to(os.fsdecode(b"bad\xff.py"))
    assert read_project_file(tmp_path, "link.py", max_bytes=MAX_BYTES).relative == "bad\\xff.py"


def test_write_never_creates_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(PathRefused) as refused:
        write_project_file(tmp_path, "bad\udcff.py", "x = 1\n", suffixes=(".py",), max_bytes=99)
    assert refused.value.rule == "not_utf8_name"
    assert os.listdir(tmp_path) == []


def test_walk_stops_below_the_depth_cap(tmp_path: Path) -> None:
    files = _chain(tmp_path, MAX_WALK_DEPTH + 5)
    listing = list_project_files(tmp_path, "**/*.py")
    assert listing.truncated
    assert listing.reason == f"folders more than {MAX_WALK_DEPTH} levels deep were not searched"
    assert listing.files == sorted(f for f in files if f.count("/") <= MAX_WALK_DEPTH)


def test_walk_leaves_no_descriptor_open(tmp_path: Path) -> None:
    _chain(tmp_path, 40)
    before = len(os.listdir("/proc/self/fd"))
    listed(tmp_path, "**/*.py")
    list_project_files(tmp_path, "**/*.py", max_results=3)
    list_project_files(tmp_path, "**/*.py", max_entries=20)
    assert len(os.listdir("/proc/self/fd")) == before


def test_walk_starts_at_the_literal_folders(tmp_path: Path) -> None:
    # Entries outside the literal start are never read, so they cannot use up the cap.
    for index in range(100):
        _touch(tmp_path, f"noise/n{index}.py")
    _touch(tmp_path, "pkg/sub/mod.py")
    assert listed(tmp_path, "pkg/sub/*.py", max_entries=2) == ["pkg/sub/mod.py"]
    assert listed(tmp_path, "pkg/**/*.py", max_entries=3) == ["pkg/sub/mod.py"]
    assert listed(tmp_path, "missing/*.py") == []
    assert listed(tmp_path, "pkg/sub/mod.py/*.py") == []


def test_walk_without_double_star_goes_no_deeper_than_the_pattern(tmp_path: Path) -> None:
    _touch(tmp_path, "a/top.py")
    for index in range(100):
        _touch(tmp_path, f"a/below/n{index}.py")
    # Entries read: root (a), a (top.py, below). Reading below/ would pass the cap.
    assert listed(tmp_path, "*/*.py", max_entries=3) == ["a/top.py"]
    assert list_project_files(tmp_path, "*/*/*.py", max_entries=3).truncated


GLOB_FILES = [
    "a.py",
    "b.py",
    "ab.py",
    "A.py",
    "a.txt",
    "x1.py",
    "x12.py",
    "[x].py",
    "q?.py",
    "star*.py",
    "back\\slash.py",
    "-.py",
    "pkg/a.py",
    "pkg/b.txt",
    "pkg/sub/a.py",
    "pkg/sub/deep/a.py",
    "other/a.py",
    "other/pkg/a.py",
]

SIMPLE_PATTERNS = [
    "*.py",
    "?.py",
    "??.py",
    "a*",
    "*",
    "[ab].py",
    "[!a].py",
    "[a-b]*.py",
    "[A-Z].py",
    "x?.py",
    "x*.py",
    "x[0-9].py",
    "x[!0-9]*.py",
    "[[]x].py",
    "q[?].py",
    "star[*].py",
    "back\\slash.py",
    "[-].py",
    "[]].py",
    "[",
    "a.py",
    "pkg/*.py",
    "pkg/*",
    "*/a.py",
    "*/*/a.py",
    "*/*/*/a.py",
    "p?g/s*/a.py",
    "./pkg//a.py",
]


@pytest.mark.parametrize("pattern", SIMPLE_PATTERNS)
def test_simple_patterns_match_like_fnmatch_and_path_match(tmp_path: Path, pattern: str) -> None:
    for rel in GLOB_FILES:
        _touch(tmp_path, rel)
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    clean = "/".join(parts)
    by_fnmatch = {
        rel
        for rel in GLOB_FILES
        if len(rel.split("/")) == len(parts)
        and all(fnmatch.fnmatchcase(c, p) for c, p in zip(rel.split("/"), parts, strict=True))
    }
    by_path_match = {
        rel
        for rel in GLOB_FILES
        if len(rel.split("/")) == len(parts) and PurePosixPath(rel).match(clean)
    }
    assert by_fnmatch == by_path_match
    assert listed(tmp_path, pattern) == sorted(by_fnmatch)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (
            "**/a.py",
            [
                "a.py",
                "other/a.py",
                "other/pkg/a.py",
                "pkg/a.py",
                "pkg/sub/a.py",
                "pkg/sub/deep/a.py",
            ],
        ),
        (
            "**/**/a.py",
            [
                "a.py",
                "other/a.py",
                "other/pkg/a.py",
                "pkg/a.py",
                "pkg/sub/a.py",
                "pkg/sub/deep/a.py",
            ],
        ),
        ("pkg/**/a.py", ["pkg/a.py", "pkg/sub/a.py", "pkg/sub/deep/a.py"]),
        ("**/pkg/a.py", ["other/pkg/a.py", "pkg/a.py"]),
        ("**/pkg/**/*.py", ["other/pkg/a.py", "pkg/a.py", "pkg/sub/a.py", "pkg/sub/deep/a.py"]),
        ("pkg/**", ["pkg/a.py", "pkg/b.txt", "pkg/sub/a.py", "pkg/sub/deep/a.py"]),
        ("pkg/sub/**", ["pkg/sub/a.py", "pkg/sub/deep/a.py"]),
        ("**/*.txt", ["a.txt", "pkg/b.txt"]),
        ("**/deep/*", ["pkg/sub/deep/a.py"]),
        ("*/**/deep/a.py", ["pkg/sub/deep/a.py"]),
        ("**/sub/**/a.py", ["pkg/sub/a.py", "pkg/sub/deep/a.py"]),
        ("**", sorted(GLOB_FILES)),
        ("a**.py", ["a.py", "ab.py"]),  # '**' inside a name is a plain '*'
        ("**/x*", ["x1.py", "x12.py"]),
    ],
)
def test_double_star_patterns(tmp_path: Path, pattern: str, expected: list[str]) -> None:
    for rel in GLOB_FILES:
        _touch(tmp_path, rel)
    assert listed(tmp_path, pattern) == expected


def test_list_refuses_an_overlong_pattern(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        list_project_files(tmp_path, "*/" * MAX_PATTERN_CHARS)
    with pytest.raises(InvalidArgument):
        list_project_files(tmp_path, "./")


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
