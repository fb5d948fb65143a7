"""Requirement specifiers, and nothing else: what a caller may ask to install.

A requirement is a project name with optional extras, version specifiers and an
environment marker (PEP 508), parsed by ``packaging``. Everything that would make
the installer fetch or run something the server did not choose is refused before
uv starts, each with its own rule:

* ``option``: an item that starts with ``-``, or carries one after a space
  (``-e``, ``-r file``, ``--index-url x``, ``pandas --pre``);
* ``vcs``: ``git+…``, ``hg+…``, ``svn+…``, ``bzr+…``;
* ``direct_reference``: ``name @ url`` (any ``@``);
* ``url``: anything with ``://`` or ``file:``;
* ``path``: a ``/`` or ``\\``, a leading ``.`` or ``~``, an archive's file name;
* ``character``: a line break, a tab or another control character, or one of
  ``$ # % & | ` { } : ?`` and the like (uv expands ``${VAR}`` and reads ``#`` as a
  comment in requirement lists; none of them belongs in a plain specifier);
* ``invalid``: what ``packaging`` cannot parse; ``empty``, ``too_many``, ``too_long``.

What reaches uv is ``str(Requirement(...))``, packaging's own rendering of what it
parsed, after ``--`` on uv's command line: never the caller's text, never an option.

``%pip install …`` lines from a kernel are parsed here too (:func:`parse_pip_install`),
on the server's side: the kernel's text is as untrusted as a tool argument.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from kernel_mcp.packages.errors import PackageRefused

__all__ = [
    "MAX_REQUIREMENTS",
    "MAX_REQUIREMENT_CHARS",
    "PipInstall",
    "parse_pip_install",
    "parse_requirement",
    "parse_requirements",
]

MAX_REQUIREMENTS = 64
MAX_REQUIREMENT_CHARS = 200

_EXAMPLE = 'pass requirement specifiers of projects on the index, e.g. "pandas", "scipy>=1.11"'
_VCS = re.compile(r"(^|[\s@])(git|hg|svn|bzr)\+", re.IGNORECASE)
_OPTION = re.compile(r"(^|\s)-")
_ARCHIVE = re.compile(r"\.(whl|zip|tar|tgz|tbz|txz|tar\.gz|tar\.bz2|tar\.xz|egg)\s*$", re.I)
# Letters, digits, what names, extras, specifiers and markers are written with, and
# spaces. Everything else (line breaks, controls, $ # % & | ` { } ...) is refused.
_ALLOWED = re.compile(r"[A-Za-z0-9._\-\[\],;!=<>~*+() \"']*")


def _quoted(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return repr(shown)


def parse_requirement(text: str) -> Requirement:
    """One requirement specifier, parsed; anything else is refused.

    Raises:
        PackageRefused: the item is not a plain specifier; ``rule`` says why.
    """
    if not isinstance(text, str) or not text.strip():
        raise PackageRefused("empty", f"An empty requirement was given; {_EXAMPLE}")
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise PackageRefused(
            "too_long",
            f"Requirement {_quoted(text)} is longer than {MAX_REQUIREMENT_CHARS} characters",
        )
    where = f"Requirement {_quoted(text)}"
    if _OPTION.search(text):
        raise PackageRefused(
            "option",
            f"{where} carries an installer option; options (-e, -r, --index-url, ...) are "
            f"not accepted: the server chooses the index, and installs wheels only; {_EXAMPLE}",
        )
    if _VCS.search(text):
        raise PackageRefused("vcs", f"{where} is a version-control reference; {_EXAMPLE}")
    if "@" in text:
        raise PackageRefused(
            "direct_reference",
            f"{where} is a direct reference (name @ location); {_EXAMPLE}",
        )
    if "://" in text or re.search(r"(^|[\s@])file:", text, re.IGNORECASE):
        raise PackageRefused("url", f"{where} is a URL; {_EXAMPLE}")
    stripped = text.strip()
    if "/" in text or "\\" in text or stripped.startswith((".", "~")) or _ARCHIVE.search(text):
        raise PackageRefused("path", f"{where} is a file path; {_EXAMPLE}")
    if not _ALLOWED.fullmatch(text):
        raise PackageRefused(
            "character",
            f"{where} holds a character no requirement specifier uses "
            "(a line break, a control character, or one of $ # % & | ` { } :)",
        )
    try:
        requirement = Requirement(stripped)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not PEP 508"
        raise PackageRefused(
            "invalid", f"{where} is not a requirement specifier: {reason}"
        ) from None
    if requirement.url:  # unreachable after the checks above; kept as the last word
        raise PackageRefused("direct_reference", f"{where} is a direct reference; {_EXAMPLE}")
    return requirement


def parse_requirements(items: Iterable[str]) -> list[Requirement]:
    """Every item parsed by :func:`parse_requirement`, in order, duplicates kept (uv
    merges them).

    Raises:
        PackageRefused: the list is empty or too long, or an item is refused.
    """
    items = list(items)
    if not items:
        raise PackageRefused("empty", f"No requirement was given; {_EXAMPLE}")
    if len(items) > MAX_REQUIREMENTS:
        raise PackageRefused(
            "too_many", f"{len(items)} requirements given; at most {MAX_REQUIREMENTS} at once"
        )
    return [parse_requirement(item) for item in items]


@dataclass(frozen=True)
class PipInstall:
    """What a ``%pip install …`` line asks for, once checked."""

    requirements: tuple[Requirement, ...]
    #: ``-U``/``--upgrade``: take the newest allowed versions, even over installed ones.
    upgrade: bool = False
    #: Options that change nothing here (``-q``, ``--no-cache-dir``, ...), for a note.
    ignored: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [canonicalize_name(r.name) for r in self.requirements]


# pip's options that are harmless here: output volume, prompts, pip's own cache and
# version check, and where pip would put things (the session's folder is the answer).
_IGNORED_FLAGS = {
    "-q",
    "-qq",
    "-qqq",
    "--quiet",
    "-v",
    "-vv",
    "--verbose",
    "--no-input",
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--no-color",
    "--progress-bar=off",
    "--user",
    "--no-warn-script-location",
    "--no-warn-conflicts",
    "--root-user-action=ignore",
}
_UPGRADE_FLAGS = {"-U", "--upgrade"}


def parse_pip_install(line: str) -> PipInstall:
    """The arguments of ``%pip install …`` (the text after ``%pip``), checked.

    ``-U``/``--upgrade`` is honoured; a few options that change nothing here
    (``-q``, ``--quiet``, ``--no-cache-dir``, ``--user``, ...) are accepted and named in
    ``ignored``; any other option, and every item :func:`parse_requirement` refuses,
    is refused.

    Raises:
        PackageRefused: ``pip_command`` when it is not ``install``, else the rule of
            the first refused item or option.
    """
    try:
        words = shlex.split(line, comments=False, posix=True)
    except ValueError as exc:
        raise PackageRefused(
            "invalid", f"The %pip line cannot be split into words: {exc}"
        ) from None
    if not words or words[0] != "install":
        command = words[0] if words else ""
        raise PackageRefused(
            "pip_command",
            f"%pip {command!s} is not available here: only `%pip install NAME ...` is "
            "(the server installs wheels into this session; see install_packages)",
        )
    upgrade = False
    ignored: list[str] = []
    items: list[str] = []
    for word in words[1:]:
        if word in _UPGRADE_FLAGS:
            upgrade = True
        elif word in _IGNORED_FLAGS:
            ignored.append(word)
        elif word.startswith("-"):
            raise PackageRefused(
                "option",
                f"%pip install option {_quoted(word)} is not accepted here: the server "
                "chooses the index and installs wheels only; pass requirement specifiers "
                "(and -U or -q if you like)",
            )
        else:
            items.append(word)
    return PipInstall(tuple(parse_requirements(items)), upgrade=upgrade, ignored=tuple(ignored))
