"""Which requirements the kernel environment and a session's folder leave unmet.

The kernel imports a session's folder first, then its environment: together they
are what the kernel sees (a name in the folder shadows the environment's). uv
resolves an install against the folder alone, and is told to leave the
environment's distributions out of it (``--excludes``): ``seaborn`` then uses the
environment's pandas and numpy rather than a second copy of each, and nothing the
kernel already imported is shadowed needlessly. What uv is not told, it cannot
check: a version the environment has that a new package does not accept, or an
extra of an environment's package (``pandas[excel]``) whose own requirements are
missing. :func:`unmet` finds those, walking the requirements from what was asked
and from every distribution in the folder; the installer then lets uv install
them into the folder too (they shadow the environment's from then on).

Environment markers are evaluated with the kernel environment's values, with each
extra the requirement was reached with (and none), as pip and uv do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from kernel_mcp.packages.environment import Distribution

__all__ = ["Plan", "applies", "plan", "unmet"]


def applies(marker: Marker | None, markers: Mapping[str, str], extras: Iterable[str] = ()) -> bool:
    """Whether a requirement with ``marker``, reached with ``extras``, applies here."""
    if marker is None:
        return True
    return any(marker.evaluate({**markers, "extra": extra}) for extra in (*extras, ""))


def _satisfied(requirement: Requirement, dist: Distribution | None) -> bool:
    return dist is not None and requirement.specifier.contains(dist.version, prereleases=True)


def _bare(requirement: Requirement) -> Requirement:
    """The requirement without its marker (already evaluated), as uv should get it."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return Requirement(f"{requirement.name}{extras}{requirement.specifier}")


def _parsed(texts: Iterable[str]) -> list[Requirement]:
    found = []
    for text in texts:
        try:
            found.append(Requirement(text))
        except InvalidRequirement:
            continue  # a broken Requires-Dist line: pip and uv skip it too
    return found


def unmet(
    roots: Sequence[Requirement],
    folder: Mapping[str, Distribution],
    environment: Mapping[str, Distribution],
    markers: Mapping[str, str],
) -> list[Requirement]:
    """Requirements, reachable from ``roots`` and from every distribution in
    ``folder``, that what the kernel sees does not satisfy: missing, or at a version
    outside the specifier. Returned without markers, once per name and extras.

    The environment's own requirements are taken as met (it is the operator's, and
    consistent or not, not this install's doing), except those of an extra asked
    for here.
    """
    seen: set[tuple[str, frozenset[str]]] = set()
    missing: dict[tuple[str, frozenset[str]], Requirement] = {}
    queue: list[tuple[Requirement, tuple[str, ...]]] = [(r, ()) for r in roots]
    for dist in folder.values():
        queue += [(r, ()) for r in _parsed(dist.requires)]
    while queue:
        requirement, reached_with = queue.pop()
        if not applies(requirement.marker, markers, reached_with):
            continue
        name = canonicalize_name(requirement.name)
        extras = frozenset(canonicalize_name(e) for e in requirement.extras)
        dist = folder.get(name) or environment.get(name)
        if not _satisfied(requirement, dist):
            missing.setdefault((name, extras), _bare(requirement))
            continue
        assert dist is not None
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for dependency in _parsed(dist.requires):
            if name in folder or (
                dependency.marker is not None
                and not applies(dependency.marker, markers)
                and applies(dependency.marker, markers, extras)
            ):
                queue.append((dependency, tuple(extras)))
    return list(missing.values())


@dataclass(frozen=True)
class Plan:
    """What one install hands uv, and what it need not."""

    #: For uv, in the order asked (markers already evaluated; kept as asked).
    install: tuple[Requirement, ...]
    #: Asked for, and already met by the kernel environment: "pandas 2.3.3".
    satisfied: tuple[str, ...] = ()
    #: Asked for, and whose marker does not hold for this kernel.
    skipped: tuple[str, ...] = ()


def plan(
    requested: Sequence[Requirement],
    folder: Mapping[str, Distribution],
    environment: Mapping[str, Distribution],
    markers: Mapping[str, str],
    *,
    upgrade: bool = False,
) -> Plan:
    """Split what was asked into what uv must install and what is already there.

    A requirement the environment meets (and the folder does not shadow) is not
    handed to uv, unless ``upgrade``: then it is, and the newest allowed version goes
    into the folder. What the folder has is handed to uv, which sees it installed.
    """
    install: list[Requirement] = []
    satisfied: list[str] = []
    skipped: list[str] = []
    for requirement in requested:
        if not applies(requirement.marker, markers):
            skipped.append(str(requirement))
            continue
        name = canonicalize_name(requirement.name)
        base = environment.get(name)
        if not upgrade and name not in folder and _satisfied(requirement, base):
            assert base is not None
            satisfied.append(str(base))
            continue
        install.append(requirement)
    return Plan(tuple(install), tuple(dict.fromkeys(satisfied)), tuple(skipped))
