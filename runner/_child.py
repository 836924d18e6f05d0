"""The child's side of one execution: confine this process, then call the function or exec.

Runs in a process freshly forked by the zygote (see ``_zygote``) and never returns: it ends in
``os.execvpe`` or ``os._exit``. Kept to the standard library and imported by the zygote before
it forks, so a child pays for no imports of its own.

The order matters: own session first (so a kill of the group cannot reach the zygote), then
the parent-death signal (so the child cannot outlive the zygote), then the cgroups (so every
descendant is accounted for from its first instruction), then rlimits, then descriptors.
"""

from __future__ import annotations

import _signal
import contextlib
import ctypes  # only the zygote imports this module: sandbox set-up calls libc through it
import fcntl
import os
import pickle
import resource
import signal
import sys

# Bound now, while the zygote imports this module: a child must never import from ``runner``
# at run time (that would import the whole package, psutil and all, in every child).
from runner._messages import (
    EXIT_EXEC_FAILED,
    EXIT_EXEC_NOT_FOUND,
    EXIT_SETUP_FAILED,
    ChildSpec,
    ExecFailed,
    Ok,
    Raised,
    SetupFailed,
)
from runner._wire import write_frame

RESULT_FD = 3
PR_SET_PDEATHSIG = 1
# Every page a child touches is copied from the zygote (copy-on-write): the child's own work
# is kept to C functions called with plain ints, bound here once (``signal.signal`` alone would
# run the enum machinery; the import statement, the import system).
_SIGKILL = int(signal.SIGKILL)
# The stop signals: what a terminal or a service manager sends a whole process group, and what
# a supervisor sends to stop a run politely. The zygote ignores them, and a child inherits
# that until it restores their defaults: one sent in between (a run timed out or cancelled as
# it started) would be lost, and the tree would only end at the KILL after the grace. So the
# zygote forks with them blocked (a blocked signal stays pending, even an ignored one), and
# they are unblocked where one can be acted on: by the task's process at the end of its
# set-up, and by a sandbox's relay and init once they pass them on.
HELD_ACROSS_FORK = frozenset(int(s) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT))
_SIG_BLOCK, _SIG_UNBLOCK = int(signal.SIG_BLOCK), int(signal.SIG_UNBLOCK)
_RESET_SIGNALS = tuple(  # what the zygote (or Python) ignores or handles, as a task finds it by default
    int(s)
    for s in (
        signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE,
        signal.SIGXFSZ,
    )
)  # fmt: skip
_SIG_DFL = int(signal.SIG_DFL)
_F_DUPFD = fcntl.F_DUPFD
_RLIMIT_NOFILE = resource.RLIMIT_NOFILE


def hold_stop_signals() -> None:
    """Block ``HELD_ACROSS_FORK``: one sent from now on stays pending (the zygote, as it forks)."""
    _signal.pthread_sigmask(_SIG_BLOCK, HELD_ACROSS_FORK)


def release_stop_signals() -> None:
    """Unblock them: one that is pending is acted on now, as this process's disposition says."""
    _signal.pthread_sigmask(_SIG_UNBLOCK, HELD_ACROSS_FORK)


def _kernel_setting(path: str, default: int) -> int:
    """A number the kernel states under /proc/sys, or ``default`` where it cannot be read."""
    try:
        with open(path) as setting:
            return int(setting.read())
    except (OSError, ValueError):
        return default


_NR_OPEN = _kernel_setting("/proc/sys/fs/nr_open", 1 << 20)  # once, as the zygote imports this


def child_main(
    spec: ChildSpec, result_fd: int, stdio: tuple[int, int, int], zygote: int, status_fd: int = -1
) -> None:
    """Confine this freshly forked process and run the task; never returns. With
    ``status_fd``, it was forked as PID 1 of a PID namespace of its own (a sandbox's), and
    tells the zygote on that pipe how its task ended."""
    where = [result_fd]  # the result pipe's number: RESULT_FD once the descriptors are arranged
    try:
        _confine(spec, where, stdio, zygote, status_fd)
    except BaseException as error:  # the task has not started: report why, as text
        text = str(error) if isinstance(error, SetupError) else f"{type(error).__name__}: {error}"
        _report(SetupFailed(text), fd=where[0])
        os._exit(EXIT_SETUP_FAILED)
    _change_environment(spec.env)
    if spec.argv is not None:
        _exec(spec)
    else:
        _call(spec)
    os._exit(0)


def _confine(
    spec: ChildSpec, result: list[int], stdio: tuple[int, int, int], zygote: int, status_fd: int
) -> None:
    os.setsid()
    prctl(PR_SET_PDEATHSIG, _SIGKILL)
    if status_fd >= 0:  # PID 1 sees no parent: the zygote is gone if its end of the pipe is
        if _reader_gone(status_fd):
            os._exit(EXIT_SETUP_FAILED)
    elif os.getppid() != zygote:  # the zygote died before the signal was armed
        os._exit(EXIT_SETUP_FAILED)
    pid = str(os.getpid()).encode()
    for procs in spec.cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
    # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: restore them, as
    # subprocess does, so that a file_size limit ends a task the way it would any program.
    for signum in _RESET_SIGNALS:
        _signal.signal(signum, _SIG_DFL)
    if spec.sandbox is not None:  # while still root (of its user namespace): namespaces need it
        _enter_sandbox(spec.sandbox, status_fd)  # this process stays behind (init); its child goes on
    _arrange_fds([*stdio, result[0]])
    result[0] = RESULT_FD
    for which, soft, hard in spec.rlimits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as error:
            raise SetupError(f"the kernel refused rlimit {which} = ({soft}, {hard}): {error}") from None
    if spec.sandbox is not None:  # last: after it, nothing of root's is left to do anything with
        _drop_privileges(int(spec.sandbox["uid"]), int(spec.sandbox["gid"]), bool(spec.sandbox["userns"]))
        if spec.sandbox["seccomp"]:
            _filter_syscalls()
    if spec.cwd is not None:
        try:
            os.chdir(spec.cwd)
        except OSError as error:
            raise SetupError(f"cannot enter the working directory {spec.cwd!r}: {error.strerror}") from None
    release_stop_signals()  # one that came meanwhile ends it now


class SetupError(Exception):
    """Why the child could not be set up, in words for the execution record."""


CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNS = 0x40000000, 0x08000000, 0x04000000, 0x00020000
CLONE_NEWPID, CLONE_NEWUSER = 0x20000000, 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
_RELAYED = tuple(
    int(s)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
)
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
SYS_OPEN_TREE, SYS_MOVE_MOUNT, OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH = (
    428,
    429,
    1,
    0o2000000,
    4,
)
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SIOCSIFFLAGS = 0x8914
_IFF_UP_LOOPBACK_RUNNING = 0x1 | 0x8 | 0x40


def _reader_gone(fd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _enter_sandbox(settings: dict[str, int | bool | str], status_fd: int) -> None:
    """Its own namespaces, its own view of the filesystem, then its own PID namespace. In a
    user namespace (a supervisor that is not root), a refusal says what may forbid it."""

    def paths(key: str) -> list[bytes]:
        return [os.fsencode(path) for path in str(settings[key]).split("\0") if path]

    try:
        network, user_namespace = bool(settings["network"]), bool(settings["userns"])
        uid, gid = int(settings["uid"]), int(settings["gid"])
        _enter_namespaces(network, user_namespace, uid, gid, pid=status_fd < 0)
        _private_filesystem(
            str(settings["workdir"]),
            int(settings["tmp_size"]),
            paths("keep"),
            paths("writable"),
            paths("hide"),
        )
        _become_pid_one(status_fd)
    except SetupError as error:
        if settings["userns"] and settings["hint"]:
            raise SetupError(f"{error}; {settings['hint']}") from None
        raise


def _enter_namespaces(network: bool, user_namespace: bool, uid: int, gid: int, *, pid: bool) -> None:
    """Own IPC, UTS and mount namespaces (and, with ``pid``, PID, for its children), and
    (without ``network``) a network namespace whose only interface is loopback, brought up.
    With ``user_namespace`` they belong to a new user namespace in which this process keeps
    its uid and gid and holds, until it drops them, the capabilities to set them up."""
    flags = CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS | (CLONE_NEWPID if pid else 0)
    flags |= 0 if network else CLONE_NEWNET
    if user_namespace:
        _libc_call(
            "unshare", flags | CLONE_NEWUSER, what="enter a user namespace of its own, and its namespaces"
        )
        try:
            for name, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1"),
                ("gid_map", f"{gid} {gid} 1"),
            ):
                with open(f"/proc/self/{name}", "w") as mapping:
                    mapping.write(text)
        except OSError as error:
            raise SetupError(f"sandbox: cannot map its uid in its user namespace: {error}") from None
    else:
        _libc_call("unshare", flags, what="enter its own namespaces")
    hostname = b"sandbox"
    _libc_call("sethostname", hostname, len(hostname), what="name its UTS namespace")
    if not network:
        import socket
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", _IFF_UP_LOOPBACK_RUNNING))
            except OSError as error:
                raise SetupError(
                    f"sandbox: cannot bring up loopback in its network namespace: {error}"
                ) from None


def _private_filesystem(
    workdir: str, tmp_size: int, keep: list[bytes], writable: list[bytes], hide: list[bytes]
) -> None:
    """In its own mount namespace: nothing of ours reaches the host's mounts, a fresh /tmp and
    /dev/shm of ``tmp_size`` bytes each, ``hide`` covered (a directory by an empty one, a file
    by an empty file), and every mount read-only but for /tmp, /dev/shm, the work directory
    and ``writable`` (the cgroup filesystem and /proc/sys included). What of ``keep`` (its
    code, read-only) and of the writable paths lies under something covered is carried back
    in, to the same place."""
    _libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None, what="make its mounts private")
    rw = [os.fsencode(workdir), *writable]
    for path in rw:
        _libc_call("mount", path, path, None, MS_BIND, None, what=f"bind {path.decode()} for writing")
    covers = [where for where in (b"/tmp", b"/dev/shm") if os.path.isdir(where)]
    hide = [path for path in hide if not _beneath(path, covers) and os.path.lexists(path)]

    def covered(path: bytes) -> bool:
        return _beneath(path, covers) or _beneath(path, hide)

    carried = [(path, os.path.isdir(path), _clone_tree(path)) for path in (*keep, *rw) if covered(path)]
    options = f"size={tmp_size},mode=1777".encode()
    for where in covers:
        _libc_call("mount", b"tmpfs", where, b"tmpfs", MS_NOSUID | MS_NODEV, options,
                   what=f"mount a private {where.decode()}")  # fmt: skip
    for path in hide:
        if os.path.isdir(path):
            flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
            _libc_call(
                "mount", b"tmpfs", path, b"tmpfs", flags, b"size=64k,mode=755", what=f"hide {path.decode()}"
            )
        else:
            _libc_call("mount", b"/dev/null", path, None, MS_BIND, None, what=f"hide {path.decode()}")
    for path, is_dir, tree in carried:
        if is_dir:
            os.makedirs(path, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        _libc_call("syscall", SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH,
                   what=f"carry {path.decode()} back in")  # fmt: skip
        os.close(tree)
    _mount_setattr(b"/", AT_RECURSIVE, MOUNT_ATTR_RDONLY, 0, "make the filesystem read-only")
    for where in (*rw, *covers):
        _mount_setattr(where, 0, 0, MOUNT_ATTR_RDONLY, f"let it write {where.decode()}")


def _beneath(path: bytes, roots: list[bytes]) -> bool:
    return any(path == root or path.startswith(root + b"/") for root in roots)


def _become_pid_one(status_fd: int) -> None:
    """The task's own PID namespace, where it sees and signals only its own processes, on a
    /proc of its own. The task is PID 2: a signal it sends itself works as anywhere (PID 1
    would ignore it). PID 1 is a minimal init that passes on the signals a supervisor sends,
    reaps orphans, and reports how the task ended, so the exit status, the signal and the
    usage mean what they mean for any run.

    Forked by a root zygote, this process is PID 1 already (``status_fd`` is its report's
    pipe, to the zygote). Otherwise (in a user namespace) it forks into the namespace it
    made, and stays behind as a relay that ends as the task ended, on the status its init
    sends up a pipe."""
    if status_fd >= 0:
        _init_and_task(status_fd)
        return
    status_r, status_w = os.pipe()
    init = os.fork()
    if init:
        _relay(init, keep=status_r, pid_one=False)
    os.close(status_r)
    _libc_call("prctl", PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0, what="tie its init to the relay")
    _init_and_task(status_w)


def _init_and_task(status_w: int) -> None:
    """As PID 1: mount its /proc, fork the task (which returns from here), and stay its init."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _libc_call("mount", b"proc", b"/proc", b"proc", flags, None, what="mount its own /proc")
    _mount_setattr(b"/proc", AT_RECURSIVE, MOUNT_ATTR_RDONLY, 0, "make its /proc read-only")
    task = os.fork()
    if task:
        _relay(task, keep=status_w, pid_one=True)
    os.close(status_w)
    _libc_call("prctl", PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0, what="tie itself to its init")


def _relay(pid: int, *, keep: int, pid_one: bool) -> None:
    """Stand in for ``pid`` until it ends, passing on the signals a supervisor sends; never
    returns. PID 1 reaps every orphan until the task ends, writes its wait status to ``keep``
    and exits (the kernel then kills whatever is left in the namespace); the outer relay reads
    that status from ``keep`` and ends the same way: by the same signal, or the same code."""
    try:
        os.closerange(0, keep)  # the task's pipes are the task's alone
        os.closerange(keep + 1, descriptor_ceiling())

        def forward(signum: int, frame: object) -> None:
            # The supervisor may signal the whole tree at once: the task may be gone already.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

        for signum in _RELAYED:
            _signal.signal(signum, forward)
        release_stop_signals()  # one that came meanwhile goes on now
        status = EXIT_SETUP_FAILED << 8
        while True:
            try:
                reaped, code = os.waitpid(-1 if pid_one else pid, 0)
            except ChildProcessError:
                break
            if reaped == pid:
                status = code
                break
        if pid_one:
            os.write(keep, status.to_bytes(4, "little"))
            os._exit(0)
        data = os.read(keep, 4)
        status = int.from_bytes(data, "little") if len(data) == 4 else EXIT_SETUP_FAILED << 8
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            _signal.signal(signum, _SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
        os._exit(os.WEXITSTATUS(status))
    except BaseException:
        os._exit(EXIT_SETUP_FAILED)


def _clone_tree(path: bytes) -> int:
    """A detached copy of the mounts at ``path`` (``open_tree(OPEN_TREE_CLONE)``), to attach
    elsewhere once what hides it is mounted."""

    try:
        return call_libc(
            "syscall", SYS_OPEN_TREE, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
        )
    except OSError as error:
        raise SetupError(f"sandbox: cannot carry {path.decode()} into its /tmp: {error.strerror}") from None


class _MountAttr(ctypes.Structure):
    """``struct mount_attr``; built once, in the zygote, not in every sandboxed child."""

    _fields_ = (
        ("set", ctypes.c_uint64),
        ("clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns", ctypes.c_uint64),
    )


def _mount_setattr(path: bytes, flags: int, set_: int, clear: int, what: str) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    _libc_call(
        "syscall",
        SYS_MOUNT_SETATTR,
        AT_FDCWD,
        path,
        flags,
        ctypes.byref(attr),
        ctypes.sizeof(attr),
        what=what,
    )


_LAST_CAP = _kernel_setting("/proc/sys/kernel/cap_last_cap", 63)  # once, as the zygote imports this


def _drop_privileges(uid: int, gid: int, user_namespace: bool) -> None:
    """Become ``uid``:``gid`` with no supplementary groups (in a user namespace, where they
    cannot be dropped, with the ones it has), no capabilities (bounding, ambient and
    inheritable sets included) and no way to gain any (``no_new_privs``: setuid binaries do
    nothing)."""
    for cap in range(_LAST_CAP + 1):
        _libc_call("prctl", PR_CAPBSET_DROP, cap, 0, 0, 0, what=f"drop capability {cap}")
    _libc_call(
        "prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, what="clear its ambient capabilities"
    )
    try:
        if not user_namespace:
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as error:
        raise SetupError(f"sandbox: cannot become uid {uid}, gid {gid}: {error.strerror}") from None
    # A uid that never was 0 keeps its capabilities across setresuid: clear them all.
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    nothing = (ctypes.c_uint32 * 6)()
    _libc_call("capset", header, nothing, what="clear its capabilities")
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="set no_new_privs")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dumps of what it read


# What a job has no business calling: tracing others, mounting, namespaces, kernel modules and
# images, BPF, perf, keyrings, swap, the clock, io_uring (a large attack surface of its own).
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "mount_setattr", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick",
    "unshare", "setns", "bpf", "perf_event_open", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "keyctl", "add_key", "request_key",
    "swapon", "swapoff", "reboot", "open_by_handle_at", "name_to_handle_at", "userfaultfd",
    "acct", "quotactl", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "syslog", "vhangup", "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip


_seccomp_program: bytes | None = None  # compiled once, in the zygote; every child inherits it
_seccomp_fprog: ctypes.Structure | None = None  # its sock_fprog, built there too: a child only calls prctl
_seccomp_failure = "pyseccomp could not be imported (is it installed, with libseccomp?)"
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def compile_seccomp() -> None:
    """In the zygote, once it has imported pyseccomp: libseccomp compiles the filter refusing
    ``DENIED_SYSCALLS`` (EPERM) to BPF, once; children load those bytes (``_filter_syscalls``)
    instead of compiling it again each. Failing here leaves it uncompiled: the sandboxed child
    then fails its start, saying so."""
    global _seccomp_program, _seccomp_fprog, _seccomp_failure
    if _seccomp_program is not None or "pyseccomp" not in sys.modules:
        return
    import pyseccomp

    try:
        seccomp = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        for name in DENIED_SYSCALLS:
            seccomp.add_rule(pyseccomp.ERRNO(1), name)  # 1: EPERM
        with open(os.memfd_create("governor-seccomp", os.MFD_CLOEXEC), "w+b") as program:
            seccomp.export_bpf(program)
            program.seek(0)
            _seccomp_program = program.read()
        _seccomp_fprog = _sock_fprog(_seccomp_program)
    except Exception as error:  # the zygote lives on; each sandboxed child's record says why
        _seccomp_failure = f"libseccomp could not compile it: {type(error).__name__}: {error}"


def _sock_fprog(program: bytes) -> ctypes.Structure:

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    code = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.cast(code, ctypes.c_void_p))
    fprog._code = code  # keeps the instructions alive with it
    return fprog


def _filter_syscalls() -> None:
    """Refuse ``DENIED_SYSCALLS`` with EPERM from here on, across exec: the program libseccomp
    compiled in the zygote, loaded with prctl (no_new_privs is already set)."""
    if _seccomp_fprog is None:
        raise SetupError(f"sandbox: no seccomp filter: {_seccomp_failure}")

    _libc_call(
        "prctl",
        PR_SET_SECCOMP,
        SECCOMP_MODE_FILTER,
        ctypes.byref(_seccomp_fprog),
        0,
        0,
        what="load its seccomp filter",
    )


def _libc_call(name: str, *args: object, what: str) -> None:
    """``call_libc`` during sandbox set-up: a refusal fails the start, saying ``what`` failed."""
    try:
        call_libc(name, *args)
    except OSError as error:
        raise SetupError(f"sandbox: cannot {what}: {error.strerror} (errno {error.errno})") from None


def _arrange_fds(sources: list[int]) -> None:
    """Put ``sources`` at fds 0.. in order and close every other descriptor."""
    # Duplicate above the target range first so no dup2 overwrites a source not yet moved.
    high = [fcntl.fcntl(fd, _F_DUPFD, 64) for fd in sources]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    os.closerange(len(sources), descriptor_ceiling())  # one close_range(2) on Linux 5.9+


def descriptor_ceiling() -> int:
    """One above the highest descriptor this process may hold: its hard RLIMIT_NOFILE, or
    where that is unlimited (or past it) the kernel's own ceiling, fs.nr_open."""
    hard = resource.getrlimit(_RLIMIT_NOFILE)[1]
    return hard if 0 < hard <= _NR_OPEN else _NR_OPEN


def _exec(spec: ChildSpec) -> None:
    assert spec.argv is not None
    os.set_inheritable(RESULT_FD, False)
    try:
        os.execvp(spec.argv[0], spec.argv)
    except OSError as error:
        _report(ExecFailed(error.errno or 0, f"{spec.argv[0]!r}: {error.strerror or error}"))
        not_found = isinstance(error, FileNotFoundError)
        os._exit(EXIT_EXEC_NOT_FOUND if not_found else EXIT_EXEC_FAILED)


def _call(spec: ChildSpec) -> None:
    # sys.std* still name fds 0-2, which now are the task's: no need to reopen them. The
    # zygote never writes to them, so nothing of its own is left in their buffers.
    try:
        function, args, kwargs = pickle.loads(spec.payload)  # type: ignore[arg-type]
        spec.payload = None
        value = function(*args, **kwargs)
    except BaseException as error:
        _flush_std()
        _report(_raised(error))
        return
    _flush_std()
    try:
        message = pickle.dumps(Ok(value).wire(), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as error:
        message = pickle.dumps(_raised(error, note="the return value could not be pickled").wire())
    _write(message, RESULT_FD)


def _change_environment(changes: dict[bytes, bytes | None]) -> None:
    """Apply the fork server's changes to the zygote's environment (``None``: unset): usually
    one variable, the execution's cookie. ``os.environb`` shares ``os.environ``'s data, and
    each change is a putenv/unsetenv, so an exec'd command sees the same."""
    for key, value in changes.items():
        if value is None:
            os.environb.pop(key, None)
        else:
            os.environb[key] = value


def _raised(error: BaseException, note: str = "") -> Raised:
    import traceback

    try:
        text = "".join(traceback.format_exception(error))
    except Exception as failure:  # e.g. a module it needs cannot be read by a sandbox's user
        text = f"{type(error).__name__}: {error}\n(the traceback could not be formatted: {failure!r})\n"
    try:
        pickled: bytes | None = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        pickled = None
    message = str(error)
    if note:
        message = f"{note}: {message}" if message else note
    kind = type(error)
    return Raised(
        pickled, f"{kind.__module__}.{kind.__qualname__}", message, text, isinstance(error, MemoryError)
    )


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            continue


def _report(message: ExecFailed | Raised | SetupFailed, fd: int = RESULT_FD) -> None:
    _write(pickle.dumps(message.wire(), protocol=pickle.HIGHEST_PROTOCOL), fd)


def _write(payload: bytes, fd: int) -> None:
    try:
        write_frame(fd, payload)
    except OSError:  # the supervisor is gone; nobody is left to tell
        os._exit(EXIT_SETUP_FAILED)


_libc = None


def libc() -> ctypes.CDLL:
    """The C library, loaded once (``preload``), with errno kept."""
    if _libc is None:
        preload()
    assert _libc is not None
    return _libc


def preload() -> None:
    """Import what every child needs, once, in the zygote, so that forks inherit it."""
    global _libc
    import linecache  # noqa: F401  # a child that raises formats its traceback, which reads
    import tokenize  # noqa: F401  # source lines (3.13's linecache imports tokenize only then)
    import traceback  # noqa: F401

    _libc = ctypes.CDLL(None, use_errno=True)


def call_libc(name: str, *args: object) -> int:
    """Call the C library's ``name`` (a system call's wrapper, or ``syscall`` itself) and
    return what it returned; ``OSError`` with its errno when it returns -1, as they all do
    to say they failed."""
    result = int(getattr(libc(), name)(*args))
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def prctl(option: int, value: int) -> None:
    """Call prctl(2) with one argument; ``OSError`` if the kernel refuses."""
    call_libc("prctl", option, value, 0, 0, 0)
