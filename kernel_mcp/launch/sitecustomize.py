"""A sandboxed kernel's ``sitecustomize``: no bytecode from the projects folder.

This file runs in the kernel's interpreter (any Python >= 3.8, any environment)
and imports nothing of kernel_mcp. The sandbox copies it, with ``PROJECTS`` filled
in, as ``sitecustomize.py`` into a folder it shares read-only and puts first on
``PYTHONPATH`` (``Sandbox.kernel_env``): a spawned kernel, the fork template (so
every forked kernel, which inherits it) and every Python a kernel starts run it
at start-up, before any code of the user's.

Why: the projects folder is shared, and a ``__pycache__/x.cpython-311.pyc``
planted there, carrying the source's mtime and size, is what Python runs instead
of ``x.py``, while ``read_file`` shows the harmless source. Here every folder
inside the projects folder is imported from source only: Python neither reads
nor writes bytecode there (nor imports a bare ``.pyc`` from it). Libraries keep
their own bytecode, read-only: a private ``sys.pycache_prefix`` would have
compiled every library from source in every kernel, making its imports several
times slower (docs/benchmarks.md). Then the
environment's own ``sitecustomize``, if it has one, runs as it would have.

Not covered: a Python started with ``-S``, ``-I`` or ``-E`` (no site, or no
PYTHONPATH), which is the caller's own choice.
"""

import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys

PROJECTS = ""


class SourceOnlyLoader(_machinery.SourceFileLoader):
    """Python's source loader, with the bytecode cache off (no stat: no cache read,
    and nothing written)."""

    def path_stats(self, path: str) -> dict:
        raise OSError("kernel-mcp: no bytecode for the projects folder")

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        raise OSError("kernel-mcp: no bytecode for the projects folder")


def _inside(path: str) -> bool:
    real = _os.path.realpath(path or _os.getcwd())
    return bool(PROJECTS) and (real == PROJECTS or real.startswith(PROJECTS + _os.sep))


def source_only_finder(path: str) -> _machinery.FileFinder:
    """A path hook: folders inside the projects folder get a finder that knows source
    and extension modules only; every other folder, the next hook."""
    if not _inside(path) or not _os.path.isdir(path or _os.getcwd()):
        raise ImportError("not inside the projects folder")
    return _machinery.FileFinder(
        path,
        (_machinery.ExtensionFileLoader, _machinery.EXTENSION_SUFFIXES),
        (SourceOnlyLoader, _machinery.SOURCE_SUFFIXES),
    )


def _install() -> None:
    if source_only_finder not in _sys.path_hooks:
        _sys.path_hooks.insert(0, source_only_finder)
    _sys.path_importer_cache.clear()


def _chain() -> None:
    """Run the environment's own sitecustomize, which this one shadows."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in _sys.path if _os.path.abspath(p or ".") != here]
    spec = _machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(_util.module_from_spec(spec))


_install()
_chain()
