"""The sandbox around local kernels: bubblewrap, with one policy for every kernel.

Why bubblewrap, and which binary: ``launch.bwrap``.

What a sandboxed kernel sees (:class:`SandboxPolicy`, every item a mount or a
namespace that bubblewrap sets up before the kernel's first instruction):

* read-only: /usr and the /bin, /sbin, /lib* links or folders; a minimal /etc
  (what Python, numpy, pandas, matplotlib and subprocesses read: the dynamic
  linker's cache, time zone, certificates, nsswitch, a passwd and group that
  list only the kernel's user, hosts); the kernel interpreter's prefixes
  (``sys.prefix``, ``base_prefix``, a venv's base) and any other kernelspec
  interpreter's; the kernelspec's own folder; ``KERNEL_MCP_SANDBOX_READ_PATHS``;
* read-write (or read-only with ``KERNEL_MCP_SANDBOX_PROJECTS=ro``): the
  projects folder, which is also the working directory;
* private: a size-limited /tmp, /dev/shm and an empty $HOME (tmpfs, gone with
  the kernel), a fresh /proc for its own PID namespace, a minimal /dev; the
  root (bwrap's tmpfs: /etc and every mount point) and /dev read-only, so that
  nothing is writable but its own mounts and the projects folder;
* its connection folder: a 64 KiB tmpfs of its own with its connection file
  bound read-only, where it binds its sockets (nothing on the host's disk; the
  server connects through ``/proc/<pid>/root``: :func:`through_root`); and in it,
  its packages folder (:data:`PACKAGES`), bound read-only: what its session installs;
* the seccomp filter (``kernel_mcp.launch.seccomp``), loaded by bwrap;
* ``sitecustomize`` first on PYTHONPATH: no bytecode from the projects folder;
* nothing else: not the server's working folder or .env, not the notebooks
  folder (masked even when it sits inside a shared folder), not the real home.

Namespaces: ``--unshare-all`` (user, mount, PID, network, IPC, UTS, cgroup)
with ``--disable-userns`` so code inside cannot make more, ``--cap-drop ALL``
(root's bwrap would otherwise keep every capability in the new user
namespace, enough to remount a read-only bind writable), ``--die-with-parent``
(a server SIGKILL ends the sandbox; the PID namespace's init ends every
process in it, ``setsid()`` daemons included) and ``--new-session``. No network
unless ``KERNEL_MCP_SANDBOX_NETWORK=true`` (``--share-net``): the kernel's
loopback is its own, so neither the server's port nor any service on
127.0.0.1 is reachable; its IPC sockets are files, so they still work.

Limits are set inside the sandbox by a small launcher (``prlimit`` on bwrap
would limit bwrap only): RLIMIT_AS, and RLIMIT_NPROC, which counts per user
namespace and so per kernel (Linux >= 5.14) but is never enforced for the
host's root (copy_process exempts kuid 0 even inside a user namespace). The
per-kernel cgroup (``kernel_mcp.launch.cgroups``), where the server can make
one, is what limits the whole tree and what limits root.

Pitfalls measured here and handled: jupyter_client's ``JPY_PARENT_PID`` names
a pid that does not exist in the new PID namespace (the kernel would exit at
once), so it is unset; ``--tmpfs /tmp`` must precede binds below /tmp (mounts
are ordered parents first); SIGINT to bwrap never reaches the kernel, so
interrupts go by message (the launcher makes the kernel its own process
group leader, so ipykernel's handler still interrupts its children too).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_mcp.config import Settings
from kernel_mcp.errors import ConfigError, SeccompUnavailable
from kernel_mcp.launch.bwrap import PROBE_TIMEOUT, Bwrap, Mount, find_bwrap, ordered, probe
from kernel_mcp.launch.seccomp import SeccompFilter, compiled, seccomp_filter

__all__ = [
    "LAUNCHER",
    "PACKAGES",
    "Sandbox",
    "SandboxPolicy",
    "describe",
    "sandbox_for",
]

log = logging.getLogger(__name__)

#: System folders shared read-only (or recreated as the links they are).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: What of /etc a Python kernel needs: the dynamic linker, names, time, certificates.
ETC_ENTRIES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "alternatives",
    "ssl",
    "ca-certificates",
    "pki",
    "mime.types",
    "protocols",
    "services",
    "locale.alias",
    "locale.conf",
    "os-release",
    "fonts",
    f"python{sys.version_info[0]}",
    f"python{sys.version_info[0]}.{sys.version_info[1]}",
)
#: Only with the network on: where the resolver lives.
ETC_NETWORK = ("resolv.conf",)
#: Variables naming host resources the sandbox cannot reach (agents, buses, displays).
UNSET_VARIABLES = (
    "JPY_PARENT_PID",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "SSH_AUTH_SOCK",
    "GPG_AGENT_INFO",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "TMPDIR",
)
#: The kernels' sitecustomize (no bytecode from the projects folder), its PROJECTS to fill.
SITECUSTOMIZE = (Path(__file__).parent / "sitecustomize.py").read_text(encoding="utf-8")
#: Where kernels see that sitecustomize's folder (outside every folder they share).
SITE_MOUNT = "/run/kernel-mcp/site"
#: A kernel's packages folder, in its connection folder: read-only to it (a bind).
PACKAGES = "packages"
#: Size of a kernel's connection folder (its sockets and connection file use none).
CONNECTION_BYTES = 65536

# Runs inside the sandbox as the kernel's first process, then becomes the kernel.
# argv: memory limit bytes, task limit, file size limit, then the kernel's own argv.
# * rlimits here, not with prlimit on bwrap, which would limit bwrap only;
# * setsid: the kernel leads its own process group, so ipykernel's interrupt
#   handler signals the group (the kernel and the processes it started), as it
#   would outside the sandbox.
LAUNCHER = (
    "import os, resource, sys\n"
    "memory, tasks, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
    "if memory: resource.setrlimit(resource.RLIMIT_AS, (memory, memory))\n"
    "if tasks: resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))\n"
    "if size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))\n"
    "os.setsid()\n"
    "os.execvp(sys.argv[4], sys.argv[4:])\n"
)


# -- the policy -------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def interpreter_prefixes(executable: str) -> tuple[str, ...]:
    """The folders an interpreter needs to run: its prefixes (a venv's base included)."""
    # Not realpath: a venv's python links to its base interpreter, and the venv is
    # told apart by where the link is (its pyvenv.cfg sits next to bin/).
    if os.path.abspath(executable) == os.path.abspath(sys.executable):
        found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    else:
        found = set()
        try:
            out = subprocess.run(
                [
                    executable,
                    "-I",
                    "-c",
                    "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, "
                    "sys.exec_prefix, sys.base_exec_prefix]))",
                ],
                capture_output=True,
                timeout=PROBE_TIMEOUT,
            )
            found.update(json.loads(out.stdout.decode().strip().splitlines()[-1]))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            # Not a Python (or a broken one): share the folder its bin/ sits in.
            real = Path(executable).resolve()
            found.add(str(real.parent.parent))
    real = Path(executable).resolve()
    found.add(str(real.parent.parent))  # a venv's interpreter links into its base install
    prefixes = set()
    for prefix in found:
        resolved = Path(prefix).resolve()
        if resolved == Path("/"):
            log.warning("the kernel interpreter's prefix is /; not sharing all of it")
            continue
        prefixes.add(str(resolved))
    # A prefix inside another is already shared.
    return tuple(sorted(p for p in prefixes if not any(_inside(p, q) and p != q for q in prefixes)))


def _inside(path: str | Path, folder: str | Path) -> bool:
    path, folder = Path(path), Path(folder)
    return path == folder or folder in path.parents


@dataclass(frozen=True)
class SandboxPolicy:
    """What every sandboxed kernel may see and do. Built from the settings once."""

    projects: Path
    projects_writable: bool = True
    network: bool = False
    read_paths: tuple[Path, ...] = ()
    tmp_bytes: int = 1024 * 2**20
    max_tasks: int = 512
    memory_bytes: int = 0
    max_file_bytes: int = 0
    """RLIMIT_FSIZE: no file a kernel writes grows past its projects folder's cap."""
    hidden: tuple[Path, ...] = ()
    """Folders masked with an empty one where they fall inside a shared folder."""
    hidden_files: tuple[Path, ...] = ()
    home: str = "/home/kernel"

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxPolicy:
        home = os.environ.get("HOME", "")
        if not home or Path(home).resolve() == Path("/"):
            home = "/home/kernel"
        server_cwd = Path.cwd().resolve()
        return cls(
            projects=settings.projects_dir,
            projects_writable=settings.sandbox_projects == "rw",
            network=settings.sandbox_network,
            read_paths=tuple(Path(p).expanduser().resolve() for p in settings.sandbox_read_paths),
            tmp_bytes=settings.sandbox_tmp_mb * 2**20,
            max_tasks=settings.sandbox_max_tasks,
            memory_bytes=settings.memory_limit_mb * 2**20,
            max_file_bytes=settings.projects_quota_mb * 2**20,
            hidden=(settings.notebooks_dir,),
            hidden_files=(server_cwd / ".env",),
            home=str(Path(home).resolve()) if Path(home).exists() else home,
        )

    def describe(self) -> str:
        parts = [
            "network " + ("on" if self.network else "off"),
            "projects " + ("rw" if self.projects_writable else "ro"),
            f"{self.max_tasks} tasks",
            f"/tmp {self.tmp_bytes // 2**20} MiB",
        ]
        if self.read_paths:
            parts.append(f"{len(self.read_paths)} read path(s)")
        return ", ".join(parts)


@dataclass
class Sandbox:
    """A probed bwrap plus the policy: turns a kernel's argv into a sandboxed one."""

    bwrap: Bwrap
    policy: SandboxPolicy
    etc_dir: Path
    """Where the synthesized passwd, group and hosts live (the backend's private folder)."""
    cgroups: str = ""
    """How the tree limits are enforced, for the banner ('cgroup v1', '' for rlimits only)."""
    seccomp: SeccompFilter | None = None
    """The kernels' seccomp filter (None: libseccomp is missing, and ``auto`` said so)."""
    _written: bool = field(default=False, repr=False)

    @property
    def site_dir(self) -> Path:
        """Where the kernels' ``sitecustomize`` (see :data:`SITECUSTOMIZE`) is written; it
        is shared read-only at :data:`SITE_MOUNT`, first on the kernels' PYTHONPATH."""
        return self.etc_dir.parent / "site"

    def describe(self) -> str:
        limits = self.cgroups or "rlimits only"
        source = "bundled " if self.bwrap.bundled else ""
        seccomp = "seccomp" if self.seccomp else "no seccomp"
        return (
            f"on ({source}bubblewrap {self.bwrap.version}; {self.policy.describe()}; "
            f"{seccomp}; {limits})"
        )

    def namespace_args(self, *, per_kernel: bool = True) -> list[str]:
        """bwrap's namespace, capability and lifetime options.

        ``per_kernel=False`` is the fork template's: it keeps its capabilities inside
        its own user namespace (to make each child's namespaces and mounts; children
        drop them all). Not ``--disable-userns``: bwrap does that with a second, nested
        user namespace, which would not own the template's mounts. Unprivileged, each
        child makes a user namespace of its own (RLIMIT_NPROC then counts per kernel)
        and forbids further ones in it; as root, children share the template's, and
        the template forbids further ones there (``kernel_mcp/launch/template.py``).
        """
        args = ["--unshare-all"]
        if self.policy.network:
            args.append("--share-net")
        if self.bwrap.userns:
            args.append("--unshare-user")
            if per_kernel:
                args.append("--disable-userns")
        args += ["--die-with-parent", "--new-session"]
        args += ["--cap-drop", "ALL"] if per_kernel else ["--cap-add", "ALL"]
        for name in UNSET_VARIABLES:
            args += ["--unsetenv", name]
        args += ["--setenv", "HOME", self.policy.home, "--setenv", "TMPDIR", "/tmp"]
        return args

    def kernel_env(self, env: dict[str, str]) -> dict[str, str]:
        """A kernel's environment as the sandbox sets it: HOME, TMPDIR, and the
        ``sitecustomize`` folder first on PYTHONPATH (so that every Python the kernel
        starts loads it too)."""
        kept = {k: v for k, v in env.items() if k not in UNSET_VARIABLES}
        kept.update(HOME=self.policy.home, TMPDIR="/tmp")
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_MOUNT]
        kept["PYTHONPATH"] = os.pathsep.join([SITE_MOUNT, *rest])
        return kept

    def hidden_by_private(
        self, *, argv_interpreter: str, kernelspec_dir: str | None
    ) -> list[tuple[str, bool]]:
        """(path, read-only) of the template's shared mounts below /tmp or $HOME.

        A forked child mounts its private /tmp and $HOME over the template's, which
        would hide these (a venv in ~/project, a projects folder below /tmp); it
        binds them back on top, in this order.
        """
        interpreters = [sys.executable, argv_interpreter]
        private = ("/tmp", self.policy.home)
        found = []
        for mount in self.mounts(
            interpreters=interpreters, kernelspec_dir=kernelspec_dir, private=False
        ):
            if mount.kind not in ("ro", "rw"):
                continue
            if any(_inside(mount.dest, root) and mount.dest != root for root in private):
                found.append((mount.dest, mount.kind == "ro"))
        return found

    def template_command(
        self, argv: list[str], *, shared: Sequence[Path], kernelspec_dir: str | None = None
    ) -> list[str]:
        """``argv`` (the fork template) in the sandbox minus its per-kernel parts.

        ``shared`` is the folder holding every kernel's connection folder; each child
        hides all but its own.
        """
        interpreters = [sys.executable, *([argv[0]] if os.path.isabs(argv[0]) else [])]
        args = [self.bwrap.path, *self.namespace_args(per_kernel=False)]
        mounts = self.mounts(
            interpreters=interpreters, shared=shared, kernelspec_dir=kernelspec_dir, private=False
        )
        for mount in mounts:
            args += mount.args()
        return [*args, "--chdir", str(self.policy.projects), "--", *argv]

    def mounts(
        self,
        *,
        interpreters: Sequence[str],
        shared: Sequence[Path] = (),
        connection: Path | None = None,
        kernelspec_dir: str | None = None,
        private: bool = True,
        workspace: Path | None = None,
    ) -> list[Mount]:
        """Every mount, ordered. ``shared``: read-write folders (the template's);
        ``connection``: the kernel's connection folder, made private.

        ``private=False`` leaves out the per-kernel tmpfs (/tmp, $HOME, /dev/shm) for a
        process that makes them itself for each child (the fork template).
        ``workspace``: the kernel's own projects folder, in place of the whole projects
        folder (a principal's, below it: the rest of it stays out of sight).
        """
        self._write_etc()
        policy = self.policy
        mounts: list[Mount] = [Mount("/proc", "proc"), Mount("/dev", "dev")]
        mounts.append(Mount(SITE_MOUNT, "ro", source=str(self.site_dir)))
        tmp = Mount("/tmp", "tmpfs", size=policy.tmp_bytes, perms="1777")
        home = Mount(policy.home, "tmpfs", size=policy.tmp_bytes, perms="0700")
        shm = Mount("/dev/shm", "tmpfs", size=policy.tmp_bytes, perms="1777")
        if private:
            mounts += [tmp, home, shm]
        else:  # the template's own; each child mounts its private ones over these
            mounts += [
                Mount("/tmp", "tmpfs", size=policy.tmp_bytes, perms="1777"),
                Mount(policy.home, "tmpfs", size=policy.tmp_bytes, perms="0700"),
            ]
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                mounts.append(Mount(path, "symlink", source=os.readlink(path)))
            elif os.path.isdir(path):
                mounts.append(Mount(path, "ro", source=path))
        mounts += self._etc_mounts()
        for prefix in {p for exe in interpreters for p in interpreter_prefixes(exe)}:
            mounts.append(Mount(prefix, "ro", source=prefix))
        if kernelspec_dir and os.path.isdir(kernelspec_dir):
            real = os.path.realpath(kernelspec_dir)
            mounts.append(Mount(real, "ro", source=real))
        for path in policy.read_paths:
            if path.exists():
                mounts.append(Mount(str(path), "ro", source=str(path)))
        projects = str(workspace or policy.projects)
        mounts.append(Mount(projects, "rw" if policy.projects_writable else "ro", source=projects))
        for folder in shared:
            mounts.append(Mount(str(folder), "rw", source=str(folder)))
        if connection is not None:
            # Not the host's folder: a tiny tmpfs for the kernel's sockets, with its
            # connection file read-only (see through_root).
            mounts.append(Mount(str(connection), "tmpfs", size=CONNECTION_BYTES, perms="0700"))
            file = str(connection / "kernel.json")
            mounts.append(Mount(file, "ro", source=file))
            packages = connection / PACKAGES  # its session's packages (install_packages)
            if packages.is_dir():
                mounts.append(Mount(str(packages), "ro", source=str(packages)))
        shared_roots = [m.dest for m in mounts if m.kind in ("ro", "rw")]
        for hidden in policy.hidden:
            if hidden.is_dir() and any(_inside(hidden, root) for root in shared_roots):
                mounts.append(Mount(str(hidden), "mask"))
        for hidden_file in policy.hidden_files:
            if hidden_file.is_file() and any(_inside(hidden_file, r) for r in shared_roots):
                # An empty file over it (not /dev/null: device files do not open there).
                mounts.append(Mount(str(hidden_file), "ro", source=str(self.etc_dir / "empty")))
        return ordered(mounts)

    def command(
        self,
        argv: list[str],
        *,
        kernel_dir: Path,
        kernelspec_dir: str | None = None,
        seccomp_fd: int | None = None,
        workspace: Path | None = None,
    ) -> list[str]:
        """``argv`` (a kernelspec's formatted command) run inside a fresh sandbox, working
        in ``workspace`` (None: the projects folder), the only projects folder it sees.

        ``seccomp_fd``: an fd the launched bwrap inherits, open on the compiled filter
        (``Sandbox.seccomp``), which bwrap reads and loads before the kernel starts.
        """
        interpreters = [sys.executable]
        if argv and os.path.isabs(argv[0]):
            interpreters.append(argv[0])
        args = [self.bwrap.path, *self.namespace_args()]
        for mount in self.mounts(
            interpreters=interpreters,
            connection=kernel_dir,
            kernelspec_dir=kernelspec_dir,
            workspace=workspace,
        ):
            args += mount.args()
        # Last, once every mount point exists: bwrap's root (a tmpfs: /etc, /home and
        # the mount points) and /dev read-only, as each forked kernel has them; the
        # private tmpfs mounted on them stay writable.
        args += ["--remount-ro", "/dev", "--remount-ro", "/"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        args += ["--chdir", str(workspace or self.policy.projects), "--"]
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER]
        return [
            *args,
            *launcher,
            str(self.policy.memory_bytes),
            str(self.policy.max_tasks),
            str(self.policy.max_file_bytes),
            *argv,
        ]

    # -- /etc -----------------------------------------------------------------------
    def _etc_mounts(self) -> list[Mount]:
        mounts = []
        names = ETC_ENTRIES + (ETC_NETWORK if self.policy.network else ())
        for name in names:
            path = Path("/etc") / name
            if not os.path.lexists(path):
                continue
            if path.is_symlink():
                target = os.path.realpath(path)
                if _inside(target, "/usr") or _inside(target, "/etc"):
                    mounts.append(Mount(str(path), "symlink", source=os.readlink(path)))
                    if _inside(target, "/etc") and os.path.exists(target):
                        mounts.append(Mount(target, "ro", source=target))
                    continue
                if not os.path.exists(target):
                    continue
                mounts.append(Mount(str(path), "ro", source=target))
            else:
                mounts.append(Mount(str(path), "ro", source=str(path)))
        for name in ("passwd", "group", "hosts"):
            if name == "hosts" and self.policy.network and os.path.exists("/etc/hosts"):
                mounts.append(Mount("/etc/hosts", "ro", source="/etc/hosts"))
                continue
            mounts.append(Mount(f"/etc/{name}", "ro", source=str(self.etc_dir / name)))
        return mounts

    def _write_etc(self) -> None:
        """passwd and group naming only root, the kernel's user and nobody; a local hosts."""
        if self._written:
            return
        self.etc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        import pwd  # Unix only; imported here so that the module imports everywhere

        uid, gid = os.getuid(), os.getgid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = os.environ.get("USER") or "kernel"
        home = self.policy.home
        users = {0: f"root:x:0:0:root:{home if uid == 0 else '/root'}:/bin/sh"}
        users[uid] = f"{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh"
        users.setdefault(65534, "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
        groups = {
            0: "root:x:0:",
            gid: f"{_group_name(gid, name)}:x:{gid}:",
            65534: "nogroup:x:65534:",
        }
        files = {
            "passwd": "".join(line + "\n" for line in users.values()),
            "group": "".join(line + "\n" for line in groups.values()),
            "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            "empty": "",
        }
        for file, text in files.items():
            target = self.etc_dir / file
            target.write_text(text)
            target.chmod(0o644)
        self.site_dir.mkdir(mode=0o755, exist_ok=True)
        site = self.site_dir / "sitecustomize.py"
        projects = f"\nPROJECTS = {str(self.policy.projects.resolve())!r}\n"
        site.write_text(SITECUSTOMIZE.replace('\nPROJECTS = ""\n', projects, 1), encoding="utf-8")
        site.chmod(0o644)
        self._written = True


def through_root(info: dict[str, Any], pid: int | None) -> dict[str, Any]:
    """A sandboxed kernel's connection info as the server reaches its sockets.

    The kernel's connection folder is a tiny tmpfs of its own inside the sandbox (its
    sockets; nothing on the host's disk), and the server connects through the root
    of a process in the sandbox's mount namespace, ``/proc/<pid>/root``: a magic
    link, followed into that namespace's mounts.
    """
    if pid is None:
        return dict(info)
    return {**info, "ip": f"/proc/{pid}/root{info['ip']}"}


def _group_name(gid: int, fallback: str) -> str:
    with contextlib.suppress(KeyError, ImportError):
        import grp

        return grp.getgrgid(gid).gr_name
    return fallback


# -- choosing at start-up ------------------------------------------------------------
def sandbox_for(settings: Settings, etc_dir: Path) -> Sandbox | None:
    """The sandbox the settings ask for, or None (off, or auto where it cannot work).

    Raises:
        ConfigError: ``KERNEL_MCP_SANDBOX=on`` and this machine cannot sandbox.
    """
    if settings.sandbox == "off":
        return None
    path, bundled = find_bwrap(settings.sandbox_bwrap)
    result = probe(path, bundled)
    if result.bwrap is None:
        if settings.sandbox == "on":
            raise ConfigError(f"KERNEL_MCP_SANDBOX=on: {result.reason}")
        log.warning(
            "kernels are NOT sandboxed: %s; set KERNEL_MCP_SANDBOX=off to accept that "
            "(or =on to refuse to start)",
            result.reason,
        )
        return None
    sandbox = Sandbox(result.bwrap, SandboxPolicy.from_settings(settings), etc_dir)
    try:
        etc_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sandbox.seccomp = seccomp_filter(str(etc_dir.parent))
    except (SeccompUnavailable, OSError) as exc:
        # The namespaces still hold without it; `on` asks for the whole sandbox.
        if settings.sandbox == "on":
            raise ConfigError(f"KERNEL_MCP_SANDBOX=on: no seccomp filter: {exc}") from exc
        log.warning(
            "kernels are sandboxed WITHOUT a seccomp filter: %s; install libseccomp2 "
            "(or set KERNEL_MCP_SANDBOX=on to refuse to start without it)",
            exc,
        )
    return sandbox


def describe(settings: Settings) -> str:
    """One phrase for the start-up banner: 'on (...)' or 'off (why)', for local kernels."""
    if settings.sandbox == "off":
        return "off (KERNEL_MCP_SANDBOX=off)"
    path, bundled = find_bwrap(settings.sandbox_bwrap)
    result = probe(path, bundled)
    if result.bwrap is None:
        return f"off ({result.reason})"
    policy = SandboxPolicy.from_settings(settings)
    source = "bundled " if result.bwrap.bundled else ""
    try:
        compiled()
        seccomp = "seccomp"
    except (SeccompUnavailable, OSError):
        seccomp = "no seccomp"
    return f"on ({source}bubblewrap {result.bwrap.version}; {policy.describe()}; {seccomp})"
