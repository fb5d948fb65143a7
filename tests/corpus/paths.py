"""Hostile path corpus: names a caller may send, each with the outcome the guard owes.

Layout, built under a base folder by :func:`prepare` and then by each case's
``setup``::

    base/
      x.py, ok.py              SECRET: siblings of the projects folder
      projects-evil/x.py       SECRET: shares the projects folder's name as a prefix
      outside/secret.py        SECRET, plus outside/sub/secret.py, outside/back.py
      projects/                the projects folder
        ok.py                  INSIDE_SOURCE
        pkg/mod.py             INSIDE_SOURCE
        notes.txt              INSIDE_SOURCE

Every file inside holds :data:`INSIDE_SOURCE` unless a case says otherwise, and
every file outside holds :data:`SECRET`; no accepted read may ever return it.

A case's ``name`` may hold the tokens ``<base>``, ``<projects>`` and
``<outside>``; :meth:`PathCase.request` replaces them with absolute paths. Run a
case with ``read_project_file(projects(base), case.request(base),
max_bytes=MAX_BYTES)`` (server level: ``KERNEL_MCP_MAX_FILE_BYTES=MAX_BYTES``,
hard links not allowed). ``expected`` is :data:`OK`, :data:`NOT_FOUND`,
:data:`NOT_TEXT` (the file is not UTF-8) or the name of the refusal rule.

The cases are generic on purpose: each position of a name (first, middle, last
component; relative and absolute) is tried with each kind of entry (file,
folder, symlink inside, outside, dangling or looping, hard link, FIFO, socket,
device), not just the ones an earlier attack used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CASES",
    "INSIDE_SOURCE",
    "MAX_BYTES",
    "NOT_FOUND",
    "NOT_TEXT",
    "OK",
    "SECRET",
    "CaseUnavailable",
    "PathCase",
    "outside",
    "prepare",
    "projects",
]

SECRET = "OUTSIDE-SECRET-4f1c"
INSIDE_SOURCE = "print('inside')\n"
MAX_BYTES = 4096
OK = "ok"
NOT_FOUND = "not_found"
NOT_TEXT = "not_text"

Setup = Callable[[Path], None]


class CaseUnavailable(Exception):
    """This machine cannot build the case (no mknod permission, running as root, ...)."""


def projects(base: Path) -> Path:
    """The projects folder of a corpus layout."""
    return base / "projects"


def outside(base: Path) -> Path:
    """The folder next to it that the guard must never reveal."""
    return base / "outside"


def _expand(base: Path, text: str) -> str:
    return (
        text.replace("<projects>", str(projects(base)))
        .replace("<outside>", str(outside(base)))
        .replace("<base>", str(base))
    )


@dataclass(frozen=True)
class PathCase:
    """One attack: how to build it, what to ask for, and what the guard must answer."""

    id: str
    setup: Setup
    """Adds files and links under ``base`` (after :func:`prepare`)."""
    name: str
    """The requested name; may hold ``<base>``, ``<projects>``, ``<outside>``."""
    expected: str
    """OK, NOT_FOUND, NOT_TEXT, or a refusal rule name."""
    source: str = INSIDE_SOURCE
    """For OK cases: the exact text the read must return."""

    def request(self, base: Path) -> str:
        """The name with its tokens replaced by absolute paths under ``base``."""
        return _expand(base, self.name)

    def build(self, base: Path) -> str:
        """Build the standard layout and this case under ``base``; return the request."""
        prepare(base)
        self.setup(base)
        return self.request(base)


def prepare(base: Path) -> None:
    """The layout every case starts from (see the module docstring).

    ``base`` may hold an earlier case's layout: everything is removed first except
    the projects folder itself (a running server keeps its path), which is emptied.
    """
    root = projects(base)
    out = outside(base)
    if base.exists():
        for entry in base.iterdir():
            if entry != root:
                _remove(entry)
    if root.is_dir() and not root.is_symlink():
        for entry in root.iterdir():
            _remove(entry)
    (out / "sub").mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    for secret_file in (
        out / "secret.py",
        out / "sub" / "secret.py",
        base / "x.py",
        base / "ok.py",
    ):
        secret_file.write_text(f"print({SECRET!r})\n")
    (base / "projects-evil").mkdir()
    (base / "projects-evil" / "x.py").write_text(f"print({SECRET!r})\n")
    (root / "ok.py").write_text(INSIDE_SOURCE)
    (root / "pkg").mkdir()
    (root / "pkg" / "mod.py").write_text(INSIDE_SOURCE)
    (root / "notes.txt").write_text(INSIDE_SOURCE)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        # By descriptors: a deep case's paths are longer than PATH_MAX.
        for folder, _, _ in os.walk(entry):
            with contextlib.suppress(OSError):  # a case made it unreadable
                os.chmod(folder, 0o700)
        shutil.rmtree(entry)
    else:
        entry.unlink()


# --- building blocks ------------------------------------------------------------------


def nothing(base: Path) -> None:
    """No extra entries."""


def steps(*parts: Setup) -> Setup:
    """Run several set-up steps in order."""

    def run(base: Path) -> None:
        for part in parts:
            part(base)

    return run


def _at(base: Path, rel: str) -> Path:
    path = Path(_expand(base, rel))
    return path if path.is_absolute() else projects(base) / rel


def file(rel: str, content: str | bytes = INSIDE_SOURCE) -> Setup:
    """A regular file (``rel`` under the projects folder, or a token path)."""

    def run(base: Path) -> None:
        path = _at(base, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return run


def folder(rel: str) -> Setup:
    def run(base: Path) -> None:
        _at(base, rel).mkdir(parents=True, exist_ok=True)

    return run


def link(rel: str, target: str) -> Setup:
    """A symlink; ``target`` is written as given (relative) or with tokens expanded."""

    def run(base: Path) -> None:
        path = _at(base, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_expand(base, target), path)

    return run


def hardlink(rel: str, target: str) -> Setup:
    def run(base: Path) -> None:
        path = _at(base, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(_at(base, target), path)

    return run


def fifo(rel: str) -> Setup:
    def run(base: Path) -> None:
        os.mkfifo(_at(base, rel))

    return run


def unix_socket(rel: str) -> Setup:
    def run(base: Path) -> None:
        path = _at(base, rel)
        # AF_UNIX paths are limited to ~108 bytes: bind through the folder's descriptor.
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(f"/proc/self/fd/{fd}/{path.name}")
        finally:
            os.close(fd)

    return run


def device(rel: str, kind: int, major: int, minor: int) -> Setup:
    def run(base: Path) -> None:
        try:
            os.mknod(_at(base, rel), kind | 0o600, os.makedev(major, minor))
        except PermissionError:
            raise CaseUnavailable("mknod is not permitted here") from None

    return run


def mode(rel: str, bits: int) -> Setup:
    """chmod; the case is unavailable as root, who reads regardless."""

    def run(base: Path) -> None:
        if os.geteuid() == 0:
            raise CaseUnavailable("permissions do not bind root")
        os.chmod(_at(base, rel), bits)

    return run


def deep(levels: int, folder_name: str = "d", leaf: str = "x.py") -> Setup:
    """``levels`` nested folders named ``folder_name``, holding ``leaf``.

    Built with ``dir_fd``, so the whole path may be longer than PATH_MAX. Keep
    ``levels`` well under the recursion limit: ``shutil.rmtree`` (and pytest's
    clean-up of old temporary folders) recurses once per level.
    """

    def run(base: Path) -> None:
        fd = os.open(projects(base), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(levels):
                os.mkdir(folder_name, dir_fd=fd)
                child = os.open(folder_name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
            leaf_fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            with os.fdopen(leaf_fd, "w") as handle:
                handle.write(INSIDE_SOURCE)
        finally:
            os.close(fd)

    return run


def sparse(rel: str, size: int) -> Setup:
    def run(base: Path) -> None:
        with open(_at(base, rel), "wb") as handle:
            handle.truncate(size)

    return run


# --- the cases --------------------------------------------------------------------------

C = PathCase
SECRET_SRC = f"print({SECRET!r})\n"

_TRAVERSAL = [
    C("dotdot_leaf", nothing, "../x.py", "path_traversal"),
    C("dotdot_to_outside", nothing, "../outside/secret.py", "path_traversal"),
    C("dotdot_after_folder", nothing, "pkg/../../x.py", "path_traversal"),
    C("dotdot_after_folder_outside", nothing, "pkg/../../outside/sub/secret.py", "path_traversal"),
    C("dotdot_after_dot", nothing, "./../x.py", "path_traversal"),
    C("dotdot_mixed_dots", nothing, "pkg/./../.././x.py", "path_traversal"),
    C("dotdot_after_missing", nothing, "a/b/c/../../../../x.py", "path_traversal"),
    C("dotdot_many", nothing, "../" * 40 + "etc/passwd", "path_traversal"),
    C("dotdot_many_py", nothing, "../" * 40 + "x.py", "path_traversal"),
    C("dotdot_alone", nothing, "..", "path_traversal"),
    C("dotdot_slash", nothing, "../", "path_traversal"),
    C("dotdot_prefix_sibling", nothing, "../projects-evil/x.py", "path_traversal"),
    C("dotdot_back_inside", nothing, "../projects/ok.py", OK),
    C("dotdot_stays_inside", nothing, "pkg/../ok.py", OK),
    C("dotdot_to_root_itself", nothing, "pkg/..", "file_type"),
    C("dot_root", nothing, ".", "file_type"),
    # Lexical '..' after a symlinked folder: the guard normalises first, so this is
    # projects/ok.py (inside), never base/ok.py (which the OS would reach).
    C(
        "dotdot_after_escaping_link",
        link("escdir", "<outside>/sub"),
        "escdir/../ok.py",
        OK,
    ),
    C("three_dots_folder", nothing, ".../x.py", NOT_FOUND),
    C("three_dots_name", nothing, "...py", NOT_FOUND),
    C("url_encoded_dotdot", nothing, "..%2fx.py", NOT_FOUND),
    C("url_encoded_dotdot_2", nothing, "%2e%2e/x.py", NOT_FOUND),
    C("backslash_dotdot", nothing, "..\\x.py", NOT_FOUND),
    C("backslash_dotdot_deep", nothing, "pkg\\..\\..\\x.py", NOT_FOUND),
    C("four_dots", nothing, "..../x.py", NOT_FOUND),
]

_ABSOLUTE = [
    C("abs_inside", nothing, "<projects>/ok.py", OK),
    C("abs_inside_nested", nothing, "<projects>/pkg/mod.py", OK),
    C("abs_inside_dotdot_inside", nothing, "<projects>/pkg/../ok.py", OK),
    C("abs_inside_double_slash", nothing, "<projects>//pkg//mod.py", OK),
    C("abs_outside", nothing, "<outside>/secret.py", "outside_projects_dir"),
    C("abs_sibling", nothing, "<base>/x.py", "outside_projects_dir"),
    C("abs_dotdot_out", nothing, "<projects>/../x.py", "outside_projects_dir"),
    C(
        "abs_dotdot_out_deep",
        nothing,
        "<projects>/pkg/../../outside/secret.py",
        "outside_projects_dir",
    ),
    C("abs_prefix_sibling", nothing, "<projects>-evil/x.py", "outside_projects_dir"),
    C("abs_etc_passwd", nothing, "/etc/passwd", "outside_projects_dir"),
    C("abs_etc_py", nothing, "/etc/x.py", "outside_projects_dir"),
    C("abs_double_slash", nothing, "//etc/passwd", "outside_projects_dir"),
    C("abs_slash", nothing, "/", "outside_projects_dir"),
    C("abs_proc_environ", nothing, "/proc/self/environ", "outside_projects_dir"),
    C("abs_proc_root_inside", nothing, "/proc/self/root<projects>/ok.py", "outside_projects_dir"),
    C("abs_dev_zero", nothing, "/dev/zero", "outside_projects_dir"),
    C("abs_root_itself", nothing, "<projects>", "file_type"),
    C("abs_root_slash", nothing, "<projects>/", "file_type"),
    C(
        "abs_through_alias_outside",
        link("<base>/alias", "<projects>"),
        "<base>/alias/ok.py",
        "outside_projects_dir",
    ),
]

_SYMLINKS = [
    # leaf
    C("link_leaf_outside_abs", link("esc.py", "<outside>/secret.py"), "esc.py", "symlink_escape"),
    C("link_leaf_outside_rel", link("esc.py", "../outside/secret.py"), "esc.py", "symlink_escape"),
    C("link_leaf_sibling", link("esc.py", "../x.py"), "esc.py", "symlink_escape"),
    C("link_leaf_inside", link("in.py", "ok.py"), "in.py", OK),
    C("link_leaf_inside_abs", link("in.py", "<projects>/pkg/mod.py"), "in.py", OK),
    C("link_leaf_inside_nested", link("pkg/in.py", "../ok.py"), "pkg/in.py", OK),
    C(
        "link_chain_inside",
        steps(link("a.py", "b.py"), link("b.py", "pkg/c.py"), link("pkg/c.py", "../ok.py")),
        "a.py",
        OK,
    ),
    C(
        "link_chain_escapes_last",
        steps(link("a.py", "b.py"), link("b.py", "<outside>/secret.py")),
        "a.py",
        "symlink_escape",
    ),
    # Out and back in: the real path is inside, so the inside file is read.
    C(
        "link_chain_out_and_back",
        steps(link("a.py", "<outside>/hop.py"), link("<outside>/hop.py", "<projects>/ok.py")),
        "a.py",
        OK,
    ),
    C("link_dangling_inside", link("dang.py", "missing.py"), "dang.py", NOT_FOUND),
    C(
        "link_dangling_outside",
        link("dang.py", "<outside>/missing.py"),
        "dang.py",
        "symlink_escape",
    ),
    C("link_loop_self", link("loop.py", "loop.py"), "loop.py", "unreadable"),
    C("link_loop_pair", steps(link("a.py", "b.py"), link("b.py", "a.py")), "a.py", "unreadable"),
    C("link_loop_folder", link("loopdir", "loopdir"), "loopdir/x.py", "unreadable"),
    C("link_to_plain_folder", link("dir.py", "pkg"), "dir.py", "file_type"),
    C(
        "link_to_folder_named_py",
        steps(folder("real.py"), link("dir.py", "real.py")),
        "dir.py",
        "not_regular_file",
    ),
    C("link_name_not_py", link("link.txt", "ok.py"), "link.txt", "file_type"),
    C("link_target_not_py", link("txt.py", "notes.txt"), "txt.py", "file_type"),
    C("link_to_fifo_inside", steps(fifo("f.py"), link("l.py", "f.py")), "l.py", "not_regular_file"),
    # first component
    C("link_dir_first_outside", link("escdir", "<outside>"), "escdir/secret.py", "symlink_escape"),
    C(
        "link_dir_first_outside_rel",
        link("escdir", "../outside"),
        "escdir/sub/secret.py",
        "symlink_escape",
    ),
    C("link_dir_first_parent", link("up", ".."), "up/x.py", "symlink_escape"),
    C("link_dir_first_parent_back", link("up", ".."), "up/projects/ok.py", OK),
    C("link_dir_first_slash", link("rootlink", "/"), "rootlink/etc/x.py", "symlink_escape"),
    C("link_dir_first_inside", link("pkglink", "pkg"), "pkglink/mod.py", OK),
    C("link_dir_self", link("self", "."), "self/self/self/ok.py", OK),
    C("link_dir_dangling", link("gone", "nowhere"), "gone/x.py", NOT_FOUND),
    # middle component
    C(
        "link_dir_middle_outside",
        link("pkg/esc", "<outside>"),
        "pkg/esc/sub/secret.py",
        "symlink_escape",
    ),
    C("link_dir_middle_inside", link("a/b", "../pkg"), "a/b/mod.py", OK),
    C(
        "link_dir_chain_outside",
        steps(link("l1", "l2"), link("l2", "<outside>/sub")),
        "l1/secret.py",
        "symlink_escape",
    ),
    C(
        "link_dir_chain_inside",
        steps(link("l1", "l2"), link("l2", "pkg")),
        "l1/mod.py",
        OK,
    ),
    # /proc and /dev
    C("link_proc_environ", link("env.py", "/proc/self/environ"), "env.py", "symlink_escape"),
    C("link_proc_fd0", link("fd0.py", "/proc/self/fd/0"), "fd0.py", "symlink_escape"),
    C("link_proc_cwd", link("cwd", "/proc/self/cwd"), "cwd/x.py", "symlink_escape"),
    C("link_proc_mem", link("mem.py", "/proc/self/mem"), "mem.py", "symlink_escape"),
    C("link_proc_root_inside", link("pr.py", "/proc/self/root<projects>/ok.py"), "pr.py", OK),
    C(
        "link_proc_root_outside",
        link("pr.py", "/proc/self/root<outside>/secret.py"),
        "pr.py",
        "symlink_escape",
    ),
    C("link_dev_zero", link("zero.py", "/dev/zero"), "zero.py", "symlink_escape"),
    C("link_dev_stdin", link("stdin.py", "/dev/stdin"), "stdin.py", "symlink_escape"),
    C("link_dev_dir", link("dev", "/dev"), "dev/zero.py", "symlink_escape"),
    C("link_abs_via_inside_link", link("in.py", "ok.py"), "<projects>/in.py", OK),
]

_HARDLINKS = [
    C("hardlink_to_outside", hardlink("hard.py", "<outside>/secret.py"), "hard.py", "hardlink"),
    C("hardlink_to_sibling", hardlink("pkg/hard.py", "<base>/x.py"), "pkg/hard.py", "hardlink"),
    C("hardlink_inside_new_name", hardlink("twin.py", "ok.py"), "twin.py", "hardlink"),
    C("hardlink_inside_original", hardlink("twin.py", "ok.py"), "ok.py", "hardlink"),
    C(
        "hardlink_via_symlink",
        steps(hardlink("hard.py", "<outside>/secret.py"), link("soft.py", "hard.py")),
        "soft.py",
        "hardlink",
    ),
]

_SPECIAL = [
    C("fifo", fifo("f.py"), "f.py", "not_regular_file"),
    C("fifo_nested", steps(folder("sub"), fifo("sub/f.py")), "sub/f.py", "not_regular_file"),
    C("socket", unix_socket("s.py"), "s.py", "not_regular_file"),
    C("char_device_zero", device("z.py", stat.S_IFCHR, 1, 5), "z.py", "not_regular_file"),
    C("char_device_tty", device("tty.py", stat.S_IFCHR, 5, 0), "tty.py", "not_regular_file"),
    C("block_device", device("b.py", stat.S_IFBLK, 7, 0), "b.py", "not_regular_file"),
    C("folder_named_py", folder("d.py"), "d.py", "not_regular_file"),
    C("folder_named_py_slash", folder("d.py"), "d.py/", "not_regular_file"),
    C("folder_named_py_nested", folder("pkg/d.py"), "pkg/d.py", "not_regular_file"),
    C("file_as_folder", nothing, "ok.py/x.py", "unreadable"),
    C("unreadable_file", steps(file("locked.py"), mode("locked.py", 0)), "locked.py", "unreadable"),
    C(
        "unsearchable_folder",
        steps(file("closed/x.py"), mode("closed", 0)),
        "closed/x.py",
        "unreadable",
    ),
]

_SUFFIXES = [
    C("txt", nothing, "notes.txt", "file_type"),
    C("no_suffix", file("script"), "script", "file_type"),
    C("folder_no_suffix", nothing, "pkg", "file_type"),
    C("pyc", file("ok.pyc"), "ok.pyc", "file_type"),
    C("pyw", file("ok.pyw"), "ok.pyw", "file_type"),
    C("py_then_txt", file("ok.py.txt"), "ok.py.txt", "file_type"),
    C("txt_then_py", file("ok.txt.py"), "ok.txt.py", OK),
    C("upper_suffix", file("UP.PY"), "UP.PY", OK),
    C("mixed_suffix", file("mix.Py"), "mix.Py", OK),
    C("case_differs_from_file", nothing, "OK.py", NOT_FOUND),
    C("trailing_dot", nothing, "ok.py.", "file_type"),
    C("trailing_space", nothing, "ok.py ", "file_type"),
    C("trailing_slash", nothing, "ok.py/", OK),
    C("trailing_slash_dot", nothing, "ok.py/.", OK),
    C("only_suffix", file(".py"), ".py", OK),
    C("hidden_file", file(".h.py"), ".h.py", OK),
    C("hidden_folder", file(".hid/h.py"), ".hid/h.py", OK),
    C("dash_name", file("-rf.py"), "-rf.py", OK),
    C("glob_chars_literal", nothing, "*.py", NOT_FOUND),
    C("glob_chars_file", file("[a]*.py"), "[a]*.py", OK),
]

_NAMES = [
    C("empty", nothing, "", "empty_name"),
    C("blank", nothing, "   ", "empty_name"),
    C("tab_newline", nothing, "\t\n", "empty_name"),
    C("nul_after", nothing, "ok.py\x00", "nul_byte"),
    C("nul_before_suffix", nothing, "ok.py\x00.txt", "nul_byte"),
    C("nul_only", nothing, "\x00", "nul_byte"),
    C("nul_dotdot", nothing, "../x.py\x00", "nul_byte"),
    C("lone_surrogate", nothing, "\ud800.py", "unencodable_name"),
    C("lone_surrogate_folder", nothing, "pkg/\udbff/x.py", "unencodable_name"),
    # U+DCFF is how Python spells the byte 0xFF of a non-UTF-8 file name.
    C("escaped_byte_name_missing", nothing, "\udcff.py", NOT_FOUND),
    C("escaped_byte_name", file("\udcff.py"), "\udcff.py", OK),
    C("newline_in_name", file("a\nb.py"), "a\nb.py", OK),
    C("carriage_return_name", file("a\rb.py"), "a\rb.py", OK),
    C("long_component", nothing, "a" * 300 + ".py", "unreadable"),
    C("long_path_missing", nothing, "a/" * 3000 + "x.py", NOT_FOUND),
    C("deep_path", deep(200), "d/" * 200 + "x.py", OK),
    # 45 levels of 100-letter names: longer than PATH_MAX (4096), which only a
    # component-by-component open can reach.
    C("path_beyond_path_max", deep(45, "d" * 100), ("d" * 100 + "/") * 45 + "x.py", OK),
    C("tilde_missing", nothing, "~/x.py", NOT_FOUND),
    C("tilde_literal_folder", file("~/x.py"), "~/x.py", OK),
    C("tilde_user", nothing, "~root/x.py", NOT_FOUND),
    C("home_var_missing", nothing, "$HOME/x.py", NOT_FOUND),
    C("home_var_literal_folder", file("$HOME/x.py"), "$HOME/x.py", OK),
    C("home_braces", nothing, "${HOME}/x.py", NOT_FOUND),
    C("percent_var", nothing, "%USERPROFILE%/x.py", NOT_FOUND),
    C("backslash_name_missing", nothing, "pkg\\mod.py", NOT_FOUND),
    C("backslash_name_literal", file("back\\slash.py"), "back\\slash.py", OK),
    C("windows_drive", nothing, "C:\\x.py", NOT_FOUND),
    C("windows_unc", nothing, "\\\\server\\share\\x.py", NOT_FOUND),
    C("file_url", nothing, "file:///etc/x.py", NOT_FOUND),
    C("double_slash_inside", nothing, "pkg//mod.py", OK),
    C("dot_slash", nothing, "./ok.py", OK),
    C("dot_slash_twice", nothing, ".//./ok.py", OK),
    # Unicode look-alikes are ordinary characters: never dots, slashes or suffixes.
    C("one_dot_leader_suffix", nothing, "ok\u2024py", "file_type"),
    C("cyrillic_suffix", nothing, "ok.p\u0443", "file_type"),
    C("two_dot_leader_folder", nothing, "\u2025/x.py", NOT_FOUND),
    C("fullwidth_dots_folder", nothing, "\uff0e\uff0e/x.py", NOT_FOUND),
    C("division_slash", nothing, "..\u2215x.py", NOT_FOUND),
    C("fullwidth_slash", nothing, "..\uff0fx.py", NOT_FOUND),
    C("fullwidth_name", nothing, "\uff4f\uff4b.py", NOT_FOUND),
    C("zero_width_space", nothing, "ok\u200b.py", NOT_FOUND),
    C("rtl_override", nothing, "\u202eyp.ko", "file_type"),
    C("nfd_of_nfc_file", file("caf\u00e9.py"), "cafe\u0301.py", NOT_FOUND),
    C("nfc_file", file("caf\u00e9.py"), "caf\u00e9.py", OK),
]

_CONTENT = [
    C("bom", file("bom.py", b"\xef\xbb\xbf" + INSIDE_SOURCE.encode()), "bom.py", OK),
    C(
        "double_bom_keeps_one",
        file("bom2.py", b"\xef\xbb\xbf\xef\xbb\xbf" + INSIDE_SOURCE.encode()),
        "bom2.py",
        OK,
        source="\ufeff" + INSIDE_SOURCE,
    ),
    C("bom_only", file("bom0.py", b"\xef\xbb\xbf"), "bom0.py", OK, source=""),
    C("latin1", file("l1.py", b"s = '\xe9t\xe9'\n"), "l1.py", NOT_TEXT),
    C("utf16", file("u16.py", INSIDE_SOURCE.encode("utf-16")), "u16.py", NOT_TEXT),
    C("truncated_utf8", file("cut.py", "x = '\u20ac'".encode()[:-2]), "cut.py", NOT_TEXT),
    C("empty_file", file("empty.py", b""), "empty.py", OK, source=""),
    C("nul_bytes_content", file("nul.py", b"x = 1\x00\n"), "nul.py", OK, source="x = 1\x00\n"),
    C(
        "exactly_max",
        file("max.py", "#" * (MAX_BYTES - 1) + "\n"),
        "max.py",
        OK,
        source="#" * (MAX_BYTES - 1) + "\n",
    ),
    C("one_over_max", file("over.py", "#" * MAX_BYTES + "\n"), "over.py", "too_large"),
    C("sparse_huge", sparse("huge.py", 1 << 32), "huge.py", "too_large"),
    C(
        "link_to_oversize",
        steps(file("over.py", "#" * (2 * MAX_BYTES)), link("l.py", "over.py")),
        "l.py",
        "too_large",
    ),
]

CASES: tuple[PathCase, ...] = (
    *_TRAVERSAL,
    *_ABSOLUTE,
    *_SYMLINKS,
    *_HARDLINKS,
    *_SPECIAL,
    *_SUFFIXES,
    *_NAMES,
    *_CONTENT,
)
"""Every case, in a stable order; ids are unique."""

assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"
