"""What a fork template is made for: a kernelspec's interpreter, options, environment
and preload. A change in any of it (the kernelspec file, the interpreter binary)
means a new template (``launch.forkserver``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

__all__ = ["Flavour", "file_mtime"]


@dataclass(frozen=True)
class Flavour:
    """What a template is made for; a change in any of it means a new template."""

    python: str
    flags: tuple[str, ...]
    """Interpreter options before ``-m`` (``-Xfrozen_modules=off``, as ``python -m
    ipykernel install`` writes): the template starts with them, and its children
    inherit their effect."""
    arguments: tuple[str, ...]
    """The kernel's arguments after ``-f {connection_file}``."""
    env: tuple[tuple[str, str], ...]
    preload: tuple[str, ...]
    resource_dir: str
    stamps: tuple[tuple[str, float], ...]
    """(path, mtime) of the kernelspec file and the interpreter."""

    @classmethod
    def of(cls, kernel_name: str, preload: list[str], extra: list[str]) -> Flavour | None:
        """The flavour of a kernelspec, or None when it is not an ipykernel we can fork."""
        try:
            spec = KernelSpecManager().get_kernel_spec(kernel_name)
        except (NoSuchKernel, OSError, ValueError):
            return None
        argv = list(spec.argv)
        flags = _interpreter_flags(argv)
        if flags is None:
            return None
        argv = [argv[0], *argv[1 + len(flags) :]]
        if len(argv) < 5 or argv[1:3] not in (["-m", "ipykernel_launcher"], ["-m", "ipykernel"]):
            return None
        if argv[0] in {
            "python",
            f"python{sys.version_info[0]}",
            "python{}.{}".format(*sys.version_info[:2]),
        }:
            argv[0] = sys.executable  # as jupyter_client's format_kernel_cmd does
        rest = argv[3:]
        try:
            at = rest.index("{connection_file}")
        except ValueError:
            return None
        if at == 0 or rest[at - 1] not in ("-f", "--f"):
            return None
        arguments = [*rest[: at - 1], *rest[at + 1 :], *extra]
        if any("{" in arg for arg in arguments):
            return None  # another template field we would have to fill
        spec_file = os.path.join(spec.resource_dir, "kernel.json")
        stamps = tuple((path, file_mtime(path)) for path in (spec_file, os.path.realpath(argv[0])))
        return cls(
            python=argv[0],
            flags=flags,
            arguments=tuple(arguments),
            env=tuple(sorted((spec.env or {}).items())),
            preload=tuple(preload),
            resource_dir=spec.resource_dir,
            stamps=stamps,
        )


#: Interpreter options whose effect is set at start-up and kept across fork (so the
#: template starting with them gives each kernel what the option would): -X and -W
#: (with their value, attached or next), and these single letters. -I, -P, -E, -s and
#: -S change what sys.path and the environment give the template's own set-up: such
#: kernelspecs are spawned.
_VALUED_FLAGS = ("-X", "-W")
_PLAIN_FLAGS = frozenset({"-u", "-B", "-O", "-OO", "-b", "-bb", "-d", "-q", "-v", "-R"})


def _interpreter_flags(argv: list[str]) -> tuple[str, ...] | None:
    """The interpreter options between ``argv[0]`` and ``-m``, or None when one of them
    is not one the template can apply (see :data:`_PLAIN_FLAGS`)."""
    flags: list[str] = []
    index = 1
    while index < len(argv) and argv[index] != "-m":
        arg = argv[index]
        if arg in _VALUED_FLAGS and index + 1 < len(argv):
            flags += [arg, argv[index + 1]]
            index += 2
            continue
        if arg.startswith(_VALUED_FLAGS) or arg in _PLAIN_FLAGS:
            flags.append(arg)
            index += 1
            continue
        return None
    return tuple(flags)


def file_mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0
