"""The seccomp filter every sandboxed kernel runs under, forked or spawned.

Built once per server with libseccomp (through ``pyseccomp``, ctypes over the
system's ``libseccomp.so.2``) and exported as a compiled BPF program: bubblewrap
loads it for a spawned kernel (``--seccomp FD``), and each forked kernel loads it
itself (``kernel_mcp/launch/template.py``: one ``prctl``, after the last
namespace and mount call and before any user code). Written with the library,
not as hand-made BPF: libseccomp resolves syscall names per architecture, checks
the architecture of every call, and orders the rules.

Baseline: Docker's default profile (moby's ``profiles/seccomp/default.json``).
Like Docker, this is an **allowlist**: a call not listed is refused, so a system
call added to Linux later (new attack surface, never reviewed here) is refused
too, where a denylist would let it through. The differences from Docker's, and
why (also in docs/security.md, "Tenants"):

* unlisted calls fail with ``ENOSYS``, not ``EPERM``: to the C library a newer
  call then looks absent and it falls back to the older one (glibc does for
  ``clone3``, ``fchmodat2``, ``faccessat2``), as runc does; the calls refused on
  purpose (:data:`DENIED`) fail with ``EPERM``, and socket families with
  ``EAFNOSUPPORT``, so a program sees a clear error;
* ``ptrace``, ``process_vm_readv``/``process_vm_writev`` are refused (Docker
  allows them on Linux >= 4.8): the kernels of several principals are uid 0 of
  one user namespace when the server runs as root;
* ``socket`` takes only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK with
  NETLINK_ROUTE (what ``getaddrinfo`` and ``getifaddrs`` use), where Docker
  refuses only AF_VSOCK; ``socketpair`` only AF_UNIX. AF_VSOCK reaches the host
  through a virtio device past the network namespace; other netlink protocols
  (netfilter, audit, uevents) and families (AF_ALG, AF_PACKET, AF_RDS, ...) are
  kernel attack surface no kernel needs;
* the ``io_uring`` calls are refused (a frequent source of Linux exploits; the
  newer Docker profiles refuse them too);
* one architecture, the server's: a 32-bit or x32 system call ends the process
  (``SIGSYS``), where Docker allows the 32-bit ABIs;
* nothing depends on capabilities: a kernel has none, so Docker's
  ``CAP_SYS_ADMIN``-gated entries (``mount``, ``unshare``, ``setns``, ``bpf``,
  ...) are simply refused, and ``clone`` with any namespace flag too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from kernel_mcp.errors import SeccompUnavailable

__all__ = ["DENIED", "SeccompFilter", "build", "compiled", "seccomp_filter"]

log = logging.getLogger(__name__)


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Docker's default allowlist for x86_64 and aarch64 (names that do not exist on an
#: architecture are skipped there), minus what the module docstring says.
ALLOWED = _names("""
accept accept4 access adjtimex alarm arch_prctl bind brk cacheflush capget capset chdir chmod
chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod
fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64
futex futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create
memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2
modify_ldt mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock
munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat
renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
sigreturn splice stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range
syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64
ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork
vmsplice wait4 waitid waitpid write writev
""")

#: Refused with EPERM, named so that a program gets a clear error (and the tests can
#: try each one): reading or changing other processes, the kernel keyring, kernel
#: attack surface, mounts and namespaces, and what needs a capability a kernel lacks.
DENIED = _names("""
ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise
keyctl add_key request_key
perf_event_open bpf userfaultfd io_uring_setup io_uring_enter io_uring_register
kexec_load kexec_file_load init_module finit_module delete_module reboot swapon swapoff
mount umount umount2 pivot_root chroot fsopen fsmount fsconfig fspick move_mount open_tree
mount_setattr unshare setns
acct quotactl quotactl_fd lookup_dcookie syslog vhangup iopl ioperm open_by_handle_at
settimeofday stime clock_settime clock_settime64 sethostname setdomainname fanotify_init
get_mempolicy mbind set_mempolicy set_mempolicy_home_node
""")

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
#: Socket families a kernel may open (AF_NETLINK only with NETLINK_ROUTE).
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6)
#: Every family number Linux has had (AF_MAX is 46 in 6.x); beyond: ENOSYS anyway.
FAMILY_LIMIT = 64
#: clone flags that make a namespace (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
#: NEWPID, NEWNET): Docker's mask 0x7E020000.
CLONE_NAMESPACES = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
#: personality() values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 variants, query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


@dataclass(frozen=True)
class SeccompFilter:
    """A compiled filter: the BPF program (``struct sock_filter`` array) as bytes."""

    program: bytes
    path: str
    """A file holding it, in the backend's private folder: bwrap reads it from an fd,
    and the fork template loads it once."""

    @property
    def instructions(self) -> int:
        return len(self.program) // 8


def build() -> bytes:
    """The filter as a compiled BPF program.

    Raises:
        SeccompUnavailable: libseccomp (or pyseccomp) is missing, or refused a rule.
    """
    try:
        import pyseccomp as sc
    except Exception as exc:  # ImportError, or pyseccomp's own "Unable to find libseccomp"
        raise SeccompUnavailable(f"libseccomp is unavailable ({exc})") from exc

    try:
        return _program(sc)
    except (RuntimeError, ValueError) as exc:  # pyseccomp's own errors
        raise SeccompUnavailable(f"libseccomp refused the filter ({exc})") from exc


def _program(sc: Any) -> bytes:
    """The rules, compiled with pyseccomp (``sc``)."""
    arch = sc.system_arch()
    rules = sc.SyscallFilter(sc.ERRNO(errno.ENOSYS))
    rules.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    with contextlib.suppress(OSError):
        # A binary tree of the syscall numbers (libseccomp >= 2.5): a call runs through
        # about ten comparisons instead of up to a few hundred.
        rules.set_attr(sc.Attr.CTL_OPTIMIZE, 2)

    def number(name: str) -> int | None:
        nr = sc.resolve_syscall(arch, name)
        # -1: a name this libseccomp does not know; below that: a call this
        # architecture does not have (a "pseudo" number). Either way, no rule.
        return nr if nr >= 0 else None

    for name in ALLOWED:
        nr = number(name)
        if nr is not None:
            rules.add_rule(sc.ALLOW, nr)
    for name in DENIED:
        nr = number(name)
        if nr is not None:
            rules.add_rule(sc.ERRNO(errno.EPERM), nr)
    # socket(): the allowed families; every other family number says so clearly.
    for family in SOCKET_FAMILIES:
        rules.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, family))
    rules.add_rule(
        sc.ALLOW, "socket", sc.Arg(0, sc.EQ, AF_NETLINK), sc.Arg(2, sc.EQ, NETLINK_ROUTE)
    )
    rules.add_rule(
        sc.ERRNO(errno.EPROTONOSUPPORT),
        "socket",
        sc.Arg(0, sc.EQ, AF_NETLINK),
        sc.Arg(2, sc.NE, NETLINK_ROUTE),
    )
    for family in range(FAMILY_LIMIT):
        if family not in (*SOCKET_FAMILIES, AF_NETLINK):
            rules.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.EQ, family))
            rules.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.EQ, family))
    rules.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, AF_UNIX))
    for family in (AF_INET, AF_INET6, AF_NETLINK):
        rules.add_rule(sc.ERRNO(errno.EOPNOTSUPP), "socketpair", sc.Arg(0, sc.EQ, family))
    # clone(): threads and processes, no namespace. clone3() passes its flags in
    # memory a filter cannot read: it gets the default, ENOSYS, and the C library
    # falls back to clone() (libseccomp refuses a rule that repeats the default).
    everything = 0
    for flag in CLONE_NAMESPACES:
        everything |= flag
        rules.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    rules.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, everything, 0))
    for value in PERSONALITIES:
        rules.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, value))
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def seccomp_filter(folder: str) -> SeccompFilter:
    """The filter, compiled and written to ``folder/seccomp.bpf`` (mode 0644).

    Raises:
        SeccompUnavailable: as :func:`build`.
    """
    program = compiled()
    path = os.path.join(folder, "seccomp.bpf")
    with open(path, "wb") as out:
        out.write(program)
    os.chmod(path, 0o644)
    return SeccompFilter(program, path)


@functools.lru_cache(maxsize=1)
def compiled() -> bytes:
    if not sys.platform.startswith("linux"):
        raise SeccompUnavailable(f"seccomp is Linux only (this is {sys.platform})")
    return build()
