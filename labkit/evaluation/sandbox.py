"""Run untrusted Python (a model's completion plus its unit tests) and say whether it passed.

The boundary is the operating system, in layers; each is used where this machine offers it, and
every run says which ones it got (`SandboxResult.layers`, `sandbox_report()`, `labkit doctor`):

1. A supervisor process in a session of its own stands between the harness and the program; it
   is a child subreaper (PR_SET_CHILD_SUBREAPER), so a descendant that double-forks and calls
   setsid is re-parented to it, not to init, and is killed when the program ends or times out.
2. Resource limits on every process: CPU seconds, address space, file size (which also caps
   the captured output: stdout and stderr are files), open files, processes, no core dumps.
3. Linux namespaces, built by the supervisor itself with unshare(2) through ctypes (as root
   directly; as another user through an unprivileged user namespace where the kernel allows
   one), or by bubblewrap (`bwrap`) where that is installed and the Python path cannot build
   them (Ubuntu 24.04 allows user namespaces to bwrap's AppArmor profile only; older systems
   install bwrap setuid). `SandboxLimits.backend` picks; "auto" probes once per process.
   - a PID namespace whose init is the supervisor's child: when the program ends, init exits
     and the kernel kills everything left in the namespace; the harness has no pid in it;
   - a network namespace with nothing but its own loopback (down), and a private IPC namespace;
   - a mount namespace in which every existing mount is read-only, /tmp, /var/tmp, /dev/shm
     and the working directory are one private tmpfs of `disk_mb` MiB (the total the program
     can write; under bubblewrap /var/tmp and /dev/shm are read-only instead), /dev holds
     only null, zero, full, random and urandom, /proc is read-only and shows only the run's
     processes, and the harness user's home directory is an empty read-only tmpfs (so
     ~/.cache/huggingface/token, ~/.ssh and the like are gone; the interpreter, if it lives
     there, is bound back read-only).
4. When the harness runs as root, the program runs as `nobody` (RLIMIT_NPROC, which root
   ignores, then caps a fork bomb). Before exec the program's process drops its capability
   bounding set and sets no_new_privs, so a root program (run_as=None) has no capabilities.
5. In same-user mode (a non-root harness, or run_as=None) the harness is non-dumpable
   (PR_SET_DUMPABLE=0) while programs run, so /proc/<harness pid>/environ is closed to them
   even without a PID namespace (its old value comes back after the last run).
6. A fresh working directory, a minimal environment with no inherited secrets, `python -I -S`.

On top, a guard (like human-eval's `reliability_guard`) disables fork/exec/kill, file deletion,
writes outside the working directory and sockets before the program runs. The guard is NOT a
security boundary: Python code can undo it (re-import a module, use ctypes). It turns the
common accidents into clear failures; the layers above hold when it is bypassed.

What is not contained where a layer is missing (no namespaces: kernels or containers that
forbid them, macOS): the program can write to world-writable places and fill the disk there,
open network connections, and in same-user mode read the user's files and signal the user's
processes (it can kill its supervisor and then leave a process behind). `sandbox_report()` says
so for the machine at hand.

Success must be proven: after the program (tests included) has run to its end, the wrapper
writes a per-run random token to a file descriptor the harness reads. sys.exit(0), os._exit(0)
or printing something cannot produce it. (Code that digs the token out of the wrapper's frames
could; a pass means "the tests ran to the end", which is the claim pass@k needs.)

The timeout counts from the start of the process, so it includes two interpreter start-ups
(about 0.1-0.3 s). Linux is the target (Colab, Binder, most servers); on macOS RLIMIT_AS is not
enforced and there is no /proc to find stray processes by.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import LabkitError
from ..validate import integer

OUTCOMES = ("passed", "failed", "timeout", "error")
_SYNTAX_EXIT = 97  # the wrapper's exit code when the program does not compile

# The supervisor: sets the limits, enters the namespaces it can get and builds the private file
# system, forks (init of the PID namespace, which forks) the program's interpreter, passes the
# token on through a pipe, kills whatever is left, and exits with the program's status (128 +
# signal when it was killed). It writes the layers it got to the report descriptor, which the
# program never holds. It imports only os, resource, signal, sys and (on Linux) ctypes.
_SUPERVISOR = r"""
import os, resource, signal, sys

token_fd, report_fd, wrapper = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
opts, hide, specs = {}, [], []
for arg in sys.argv[4:]:
    if arg.startswith("--"):
        key, value = arg[2:].split("=", 1)
        if key == "hide":
            hide.append(value)
        else:
            opts[key] = value
    else:
        specs.append(arg)
uid = int(opts["uid"]) if "uid" in opts else None
gid = int(opts["gid"]) if "gid" in opts else None

def report(*words):
    os.write(report_fd, (" ".join(words) + " ").encode())

def note(what, exc):
    report("note:" + what + ":" + type(exc).__name__ + ":" + str(exc).replace(" ", "_"))

for spec in specs:
    name, soft, hard = spec.split(":")
    res, soft, hard = getattr(resource, name), int(soft), int(hard)
    ceiling = resource.getrlimit(res)[1]
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(res, (soft, hard))
token = b""
while not token.endswith(b"\n"):
    chunk = os.read(0, 64)
    if not chunk:
        break
    token += chunk

libc = None
if sys.platform.startswith("linux"):
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    except Exception as exc:  # no ctypes or no libc: only the portable layers
        note("ctypes", exc)
        libc = None

def call(result):
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result

def prctl(option, arg=0):
    return call(libc.prctl(option, arg, 0, 0, 0))

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE = 1 << 18

def mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if isinstance(s, str) else s
    call(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)))

def enter_namespaces():
    # mount, PID (for the next child), network, IPC, UTS; root needs no user namespace
    flags = 0x00020000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000
    euid, egid = os.geteuid(), os.getegid()
    if euid == 0 and libc.unshare(flags) == 0:
        return "root"
    call(libc.unshare(0x10000000 | flags))  # and a user namespace
    if euid == 0:  # root with CAP_SETUID but not CAP_SYS_ADMIN (a container): map both ids
        ids = {0, uid if uid is not None else 0}
        gids = {0, gid if gid is not None else 0}
        uid_map = "".join(f"{i} {i} 1\n" for i in sorted(ids))
        gid_map = "".join(f"{i} {i} 1\n" for i in sorted(gids))
    else:
        with open("/proc/self/setgroups", "w") as handle:
            handle.write("deny")
        uid_map, gid_map = f"{euid} {euid} 1\n", f"{egid} {egid} 1\n"
    with open("/proc/self/uid_map", "w") as handle:
        handle.write(uid_map)
    with open("/proc/self/gid_map", "w") as handle:
        handle.write(gid_map)
    return "user"

def read_only_everywhere():
    if os.uname().machine in ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x"):
        attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)  # mount_setattr: MOUNT_ATTR_RDONLY, recursive
        if libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
            return
    # older kernels: remount each mount read-only, keeping the flags a user namespace locks
    keep = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
    with open("/proc/self/mountinfo") as handle:
        points = [line.split()[4] for line in handle]
    for point in points:
        point = point.encode().decode("unicode_escape")
        try:
            flags = os.statvfs(point).f_flag
            extra = sum(m for s, m in keep if flags & s)
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | extra)
        except OSError as exc:
            if point == "/":
                raise
            note("ro:" + point, exc)

def minimal_dev():
    # device nodes stay writable on a read-only mount: a root program could write a raw disk.
    # /dev becomes a read-only tmpfs with the harmless nodes bound in (as bubblewrap's --dev)
    nodes = [n for n in ("null", "zero", "full", "random", "urandom") if os.path.exists("/dev/" + n)]
    handles = [os.open("/dev/" + n, os.O_PATH) for n in nodes]
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=65536,nr_inodes=64,mode=0755")
    for name, handle in zip(nodes, handles):
        open("/dev/" + name, "w").close()
        mount(f"/proc/self/fd/{handle}", "/dev/" + name, None, MS_BIND)
        os.close(handle)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, "/dev/" + name)
    os.mkdir("/dev/shm")
    mount(None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)

def interpreter_places():
    # what the interpreter needs to start: its prefix (a venv: bin/.. of the path it was started
    # by, since under -S sys.prefix is the base Python's), the base Python's, its binary
    places = (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)),
              os.path.dirname(os.path.dirname(os.path.abspath(sys.executable))))
    needed = {os.path.realpath(p) for p in places}
    return sorted(p for p in needed if not any(p.startswith(q + os.sep) for q in needed))

def private_tmp(size, inner):
    # one tmpfs holds /tmp, /var/tmp, /dev/shm and the working directory: one total cap.
    # An interpreter that lives there (a project cloned into /tmp) is bound back read-only,
    # or no program could start.
    kept = [p for p in interpreter_places()
            if any(p.startswith(t + os.sep) for t in ("/tmp", "/var/tmp"))]
    handles = [(os.open(p, os.O_PATH | os.O_DIRECTORY), os.statvfs(p).f_flag) for p in kept]
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},nr_inodes=4096,mode=1777")
    for sub in ("tmp", "var-tmp", "shm"):
        os.mkdir("/tmp/" + sub)
        os.chmod("/tmp/" + sub, 0o1777)
    for target, sub in (("/var/tmp", "var-tmp"), ("/dev/shm", "shm"), ("/tmp", "tmp")):
        if os.path.isdir(target):
            mount("/tmp/" + sub, target, None, MS_BIND)
    keep = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
    for path, (handle, flags) in zip(kept, handles):
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        extra = sum(m for f, m in keep if flags & f)
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | extra)
        os.close(handle)

def make_workdir(source, inner):
    os.mkdir(inner, 0o700)
    with open(inner + "/program.py", "wb") as handle:
        handle.write(source)
    if uid is not None:
        os.chown(inner, uid, gid)
        os.chown(inner + "/program.py", uid, gid)
    os.chdir(inner)
    os.environ["HOME"] = os.environ["TMPDIR"] = inner

def hide_homes():
    # the interpreter may live in the home directory (pyenv, conda): bind it back, read-only
    needed = set(interpreter_places())
    hidden = True
    for home in hide:
        home = os.path.realpath(home)
        if home == "/" or not os.path.isdir(home):
            continue  # nothing to hide, or already under the private /tmp
        inside = sorted(p for p in needed if p.startswith(home + os.sep))
        if home in needed:
            report("note:home-holds-the-interpreter:" + home)
            hidden = False
            continue
        handles = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inside]
        mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "size=65536,nr_inodes=256,mode=0755")
        for path, handle in zip(inside, handles):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
            os.close(handle)
        mount(None, home, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return hidden

def drop_privileges():
    if libc is not None:
        try:
            prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: no setuid binary gives privileges back
            prctl(47, 4)  # PR_CAP_AMBIENT_CLEAR_ALL
        except OSError:
            pass
        try:
            for cap in range(64):  # empty the bounding set (needs CAP_SETPCAP: root, user ns)
                if libc.prctl(24, cap, 0, 0, 0) != 0:
                    break
            prctl(28, 0b11)  # SECBIT_NOROOT, locked: exec as uid 0 grants no capabilities
            if uid is None and os.geteuid() == 0:
                report("no-capabilities")  # a root program: what it lacks is what matters
        except OSError:
            pass
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

def start_program(read_end, write_end):
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(write_end)
        os.dup2(read_end, 0)
        drop_privileges()
        os.close(report_fd)
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", wrapper, str(token_fd)])
    finally:
        os._exit(127)

def exit_code(status):
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code

def kill_children():
    # kill the supervisor's children until none is left; as a subreaper, every orphaned
    # descendant becomes a child, however it detached (setsid, double fork, empty environment)
    me = str(os.getpid()).encode()
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as handle:
                        if handle.read().rsplit(b")", 1)[1].split()[1] == me:
                            os.kill(int(entry), signal.SIGKILL)
                except (OSError, IndexError):
                    pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return

child = None

def stop(signum, frame):  # the harness's timeout, or a program that signals its supervisor
    if child:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    kill_children()
    os._exit(128 + signum)

signal.signal(signal.SIGTERM, stop)

namespaces = None
if libc is not None:
    try:
        prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        report("subreaper")
    except OSError as exc:
        note("subreaper", exc)
    if opts.get("ns") == "1":
        try:
            namespaces = enter_namespaces()
            report("pid-namespace", "net-namespace", "ipc-namespace")
            if namespaces == "user":
                report("user-namespace")
        except OSError as exc:
            note("namespaces", exc)

if namespaces:
    try:
        with open("program.py", "rb") as handle:
            source = handle.read()
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        read_only_everywhere()
        try:
            minimal_dev()
            report("read-only-fs")  # device nodes included
        except OSError as exc:
            note("dev", exc)
        inner = "/tmp/" + os.path.basename(os.getcwd())
        private_tmp(int(opts["disk"]), inner)
        make_workdir(source, inner)
        report("private-tmp")
        if hide_homes():
            report("home-hidden")
    except OSError as exc:
        note("mounts", exc)
elif "workdir" in opts:
    # bubblewrap built the namespaces and the file system; the program comes in /tmp
    with open(opts["program"], "rb") as handle:
        source = handle.read()
    os.unlink(opts["program"])
    make_workdir(source, opts["workdir"])
    report("inside-bwrap")

read_end, write_end = os.pipe()
child = os.fork()
if child == 0 and namespaces:
    # pid 1 of the new PID namespace: /proc for it, then the program; when the program ends,
    # init exits and the kernel kills every process left in the namespace
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the namespace dies with its supervisor
    try:
        # read-only: a root program without capabilities could still write sysctls it owns
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        report("private-proc")
    except OSError as exc:
        note("proc", exc)
    program = os.fork()
    if program == 0:
        start_program(read_end, write_end)
    os.close(read_end)
    os.close(write_end)
    os.close(report_fd)
    os.close(token_fd)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(127)
        if pid == program:
            os._exit(exit_code(status))
if child == 0:
    start_program(read_end, write_end)
os.close(read_end)
os.write(write_end, token)
os.close(write_end)
status = os.waitpid(child, 0)[1]
child = None
kill_children()
os._exit(exit_code(status))
"""

# The wrapper: reads the token, compiles the program, installs the guard, runs the program,
# and only if it returns writes the token and leaves at once (no atexit, no thread joins).
_WRAPPER = r"""
import builtins, io, os, sys

def _guard(workdir):
    import _posixsubprocess, posix, shutil, socket, subprocess

    def blocked(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the labkit sandbox")
        return refuse

    for module in (os, posix):
        for name in (
            "kill", "killpg", "fork", "forkpty", "system", "popen", "setsid", "setpgid",
            "setpgrp", "setuid", "setgid", "setreuid", "setregid",
            "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace",
            "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot",
            "link", "symlink", "mkfifo", "mknod", "chdir", "fchdir",
            "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
            "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
            "spawnvpe", "posix_spawn", "posix_spawnp",
        ):
            if hasattr(module, name):
                setattr(module, name, blocked(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, blocked(f"shutil.{name}"))
    subprocess.Popen = blocked("subprocess.Popen")
    _posixsubprocess.fork_exec = blocked("fork_exec")

    def no_network(*args, **kwargs):
        raise OSError("network access is disabled in the labkit sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            no_network()

    socket.socket = socket.SocketType = NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, no_network)
    for name in ("ctypes", "_ctypes", "multiprocessing", "resource", "_socket", "_posixsubprocess"):
        sys.modules[name] = None

    real_open, real_os_open = io.open, os.open
    root = os.path.realpath(workdir) + os.sep

    def inside(path):
        return os.path.realpath(os.fspath(path)).startswith(root)

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"writing outside the sandbox directory: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        if flags & writes and not inside(path):
            raise PermissionError(f"writing outside the sandbox directory: {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open


def _main():
    fd, write, leave = int(sys.argv[1]), os.write, os._exit
    token = sys.stdin.readline().strip().encode()
    sys.stdin = io.StringIO("")
    with open("program.py", encoding="utf-8") as handle:
        source = handle.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as exc:
        sys.stderr.write(f"labkit-sandbox-compile: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        leave(97)
    _guard(os.getcwd())
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
    sys.stdout.flush()
    sys.stderr.flush()
    write(fd, token)
    leave(0)

_main()
"""


BACKENDS = ("auto", "unshare", "bwrap", "none")

# (field, lowest, highest) of the integer limits. The lows are what a correct program needs:
# the interpreter does not start in less address space or with fewer descriptors, and the
# program, its supervisor and init count as processes.
_LIMIT_RANGES = (
    ("memory_mb", 64, 65536),
    ("file_size_mb", 1, 4096),
    ("disk_mb", 1, 4096),
    ("max_processes", 4, 4096),
    ("max_open_files", 16, 65536),
    ("output_chars", 0, None),
)


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int | None = None  # default: the timeout rounded up, plus one
    memory_mb: int = 512  # address space per process
    file_size_mb: int = 4  # largest file the program may write; stdout/stderr are files too
    disk_mb: int = 32  # all it may write: the tmpfs of /tmp, /var/tmp, /dev/shm and its directory
    max_processes: int = 32  # processes of the sandbox user (RLIMIT_NPROC); root ignores it
    max_open_files: int = 64
    output_chars: int = 4000  # how much of stdout and stderr comes back
    run_as: str | None = "nobody"  # user to drop to when the harness is root; None keeps root
    python: str | None = None  # interpreter; default: sys.executable, or python3 for `nobody`
    # who builds the namespaces: "auto" (unshare(2) from Python; bubblewrap where that fails
    # and bwrap works), "unshare", "bwrap", or "none" (only the portable layers: to compare)
    backend: str = "auto"

    def __post_init__(self):
        # a negative memory_mb would remove the cap, max_processes=0 would fail every program
        for name, low, high in _LIMIT_RANGES:
            integer(getattr(self, name), f"SandboxLimits.{name}", low=low, high=high)
        if self.cpu_seconds is not None:
            integer(self.cpu_seconds, "SandboxLimits.cpu_seconds", low=1, high=3600)
        for name in ("run_as", "python"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise LabkitError(
                    f"SandboxLimits.{name}={value!r}: valid is None or a non-empty string"
                )
        if self.backend not in BACKENDS:
            raise LabkitError(
                f"SandboxLimits.backend={self.backend!r}: valid is one of {', '.join(BACKENDS)}"
            )


# The layers a run can get, and what each one stops when the in-process guard is bypassed.
LAYERS = {
    "session": "own session and process group, killed as a whole",
    "rlimits": "CPU seconds, address space, file size, open files, processes",
    "supervisor": "its parent is a supervisor, not the harness",
    "subreaper": "orphaned descendants are re-parented to the supervisor and killed with the run",
    "other-user": "runs as another user (nobody): the harness's files and processes are closed",
    "pid-namespace": "own PID namespace: everything dies with its init; the harness has no pid",
    "private-proc": "/proc shows only the run's own processes",
    "net-namespace": "own network namespace: no interface but its own loopback",
    "ipc-namespace": "own System V IPC namespace",
    "user-namespace": "namespaces through an unprivileged user namespace (no root needed)",
    "bwrap": "bubblewrap built the namespaces and the file system",
    "read-only-fs": "every existing mount is read-only",
    "private-tmp": "/tmp, /var/tmp, /dev/shm and the working directory are one capped tmpfs",
    "home-hidden": "the harness user's home directory is an empty read-only tmpfs",
    "harness-undumpable": "the harness is non-dumpable: /proc/<harness>/environ is closed",
    "no-capabilities": "a root program has no capabilities: processes that hold some are closed",
}

# (threat, the sets of layers any one of which contains it, (layer, what it holds) in part).
_THREATS = {
    "outlive": (
        "a process outlives the run (fork + setsid + exec, empty environment)",
        (("pid-namespace",), ("subreaper", "other-user")),
        ("subreaper", "killed at the end, unless the program first kills its supervisor"),
    ),
    "write-outside": (
        "writes outside the working directory (_io.open on /tmp, /var/tmp, /dev/shm)",
        (("read-only-fs", "private-tmp"),),
        ("other-user", "only world-writable places: /tmp, /var/tmp, /dev/shm"),
    ),
    "network": (
        "network connections (a re-imported socket to 127.0.0.1)",
        (("net-namespace",),),
        None,
    ),
    "disk-fill": (
        "filling the disk with many files of the per-file limit",
        (("private-tmp",),),
        None,
    ),
    "harness-environ": (
        "reading the harness's environment (/proc/<pid>/environ)",
        (("private-proc",), ("other-user",), ("harness-undumpable",)),
        None,
    ),
    "user-processes": (
        "reading the environment of the user's other processes (the notebook server)",
        (("private-proc",), ("other-user",)),
        ("no-capabilities", "only processes that hold capabilities (root's usually do)"),
    ),
    "home-secrets": (
        "reading the user's secrets (~/.cache/huggingface/token)",
        (("home-hidden",),),
        ("other-user", "only files that are not world-readable"),
    ),
    "kill": ("killing the harness or the supervisor", (("pid-namespace",), ("other-user",)), None),
}


@dataclass
class SandboxResult:
    outcome: str  # passed | failed | timeout | error
    reason: str
    wall_s: float
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    session: int | None = None  # session id of the process tree (its supervisor's pid)
    marker: str = ""  # environment entry every process of the run inherits
    isolation: str = ""  # which user and interpreter ran it, and its layers
    workdir: str = field(default="", repr=False)  # removed by the time you read this
    layers: tuple[str, ...] = ()  # the OS layers this run got (keys of LAYERS)
    notes: tuple[str, ...] = field(default=(), repr=False)  # why a layer is missing

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


@dataclass(frozen=True)
class SandboxReport:
    """Which layers a probe run got on this machine in one mode, and what that contains."""

    mode: str
    layers: tuple[str, ...]
    missing: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def threats(self) -> list[dict]:
        """One row per class of guard-bypassing program: contained, and by which layers."""
        rows = []
        for key, (threat, containing, partly) in _THREATS.items():
            by = [" + ".join(need) for need in containing if set(need) <= set(self.layers)]
            if by:
                status, detail = "contained", " or ".join(by)
            elif partly and partly[0] in self.layers:
                status, detail = "partly", f"{partly[0]}: {partly[1]}"
            else:
                status = "NOT contained"
                detail = "needs " + " or ".join(" + ".join(need) for need in containing)
            rows.append({"key": key, "threat": threat, "status": status, "by": detail})
        return rows

    def status(self, key: str) -> str:
        """ "contained", "partly" or "NOT contained" for one threat (a key of the table)."""
        if key not in _THREATS:
            raise LabkitError(f"unknown threat {key!r}; valid: {', '.join(_THREATS)}")
        return next(row["status"] for row in self.threats() if row["key"] == key)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.threats())

    @property
    def complete(self) -> bool:
        return all(row["status"] == "contained" for row in self.threats())

    def __str__(self) -> str:
        lines = [f"sandbox mode: {self.mode}", "active layers: " + ", ".join(self.layers)]
        if self.missing:
            lines.append("missing layers: " + ", ".join(self.missing))
        for row in self.threats():
            lines.append(f"  {row['status']:<13} {row['threat']} ({row['by']})")
        return "\n".join(lines)


def _world_executable(path: str) -> bool:
    """Can any user run this file (every directory above searchable, the file executable)?"""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


@lru_cache(maxsize=8)
def _isolation(run_as: str | None, python: str | None) -> tuple[tuple[int, int] | None, str]:
    """(uid, gid) to drop to or None, and the interpreter to run."""
    interpreter = python or sys.executable
    if run_as is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, interpreter
    import pwd

    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        warnings.warn(f"sandbox user {run_as!r} does not exist; running as root", stacklevel=3)
        return None, interpreter
    if python is None and not _world_executable(interpreter):
        found = [p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if _world_executable(p)]
        if not found:
            warnings.warn(
                f"{sys.executable} is not executable by {run_as!r} and no system python3 is; "
                "the sandbox runs as root",
                stacklevel=3,
            )
            return None, interpreter
        interpreter = found[0]
    return (entry.pw_uid, entry.pw_gid), interpreter


def _limits(limits) -> SandboxLimits:
    if limits is None:
        return SandboxLimits()
    if not isinstance(limits, SandboxLimits):
        raise LabkitError(f"limits must be a SandboxLimits (or None), not {type(limits).__name__}")
    return limits


def drops_privileges(limits: SandboxLimits | None = None) -> bool:
    """Whether programs run as another user (`limits.run_as`): only when the harness is root."""
    limits = _limits(limits)
    return _isolation(limits.run_as, limits.python)[0] is not None


def _processes_of(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    count += int(line.split()[1]) == uid
                    break
        except OSError:
            continue
    return count


def sandbox_processes(session: int, marker: str = "") -> list[int]:
    """Live (non-zombie) processes of one sandbox run, from /proc (empty where there is none):
    members of its session, and any process whose environment carries the run's marker (a
    child that escaped the session with setsid still inherited the environment)."""
    session = integer(session, "session", low=0)
    if not isinstance(marker, str):
        raise LabkitError(f"marker must be a string (the run's environment marker), got "
                          f"{type(marker).__name__}")
    found = []
    needle = marker.encode()
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):  # after the command name: state, ppid, pgrp, session
                continue
            if int(fields[3]) == session:
                found.append(int(proc_dir.name))
            elif needle and needle in (proc_dir / "environ").read_bytes():
                found.append(int(proc_dir.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_run(session: int, marker: str, settle_s: float = 1.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    while True:
        members = sandbox_processes(session, marker)
        if not members or time.monotonic() > deadline:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _wait_for_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for the supervisor to exit without reaping it, so that its pid (the id of the session
    and the group) cannot be reused by an unrelated process before the session is killed."""
    if not hasattr(os, "waitid"):  # macOS: a reaping wait; the pid-reuse window is tiny
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    pause = 0.001
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.02)
    return True


def _remove_tree(path: str) -> None:
    def retry(function, target, _exc):
        # the program may have made files or directories read-only
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            function(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _read_capped(path: str, limit: int) -> str:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[... output cut ...]" if len(data) > limit else "")


def _read_tail(path: str, size: int = 2000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - size))
        return handle.read(size).decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _classify(rc, timed_out, proven, stderr_tail, full, timeout, limits, cpu):
    """(outcome, reason) from the exit status, the token and the tail of stderr.
    `full` names the captured streams that reached the file-size limit."""
    if timed_out:
        return "timeout", f"wall-clock timeout after {timeout:g} s: process group killed"
    if proven and rc == 0:
        return "passed", "all tests ran to the end"
    compile_error = [
        line for line in stderr_tail.splitlines() if line.startswith("labkit-sandbox-compile:")
    ]
    if rc == _SYNTAX_EXIT and compile_error:
        return "error", "not valid Python: " + compile_error[-1].split(":", 1)[1].strip()
    if full:
        return "failed", f"{' and '.join(full)} reached the {limits.file_size_mb} MiB output limit"
    if rc is not None and rc < 0:
        # the supervisor itself died: the program signalled its parent or its group
        return (
            "failed",
            f"sandbox supervisor killed by {_signal_name(-rc)} (the program signalled it)",
        )
    if rc is not None and rc > 128 and rc - 128 < 65:
        sig = rc - 128
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU time limit of {cpu} s exceeded (SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return (
                "failed",
                f"output or a file exceeded the {limits.file_size_mb} MiB limit (SIGXFSZ)",
            )
        if sig == signal.SIGSEGV:
            return "failed", "crashed with SIGSEGV (a stack overflow from deep recursion?)"
        return "failed", f"killed by {_signal_name(sig)}"
    if rc == 0:
        return "failed", "exited with code 0 before its tests finished (no success token)"
    detail = _last_line(stderr_tail)
    return "failed", detail or f"exited with code {rc}"


@lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_undumpable_lock = threading.Lock()
_undumpable = {"runs": 0, "before": 1, "ok": False}


@contextlib.contextmanager
def _harness_undumpable():
    """PR_SET_DUMPABLE=0 on the harness while same-user programs run: a program of the same user
    can then neither read /proc/<harness pid>/environ nor attach a debugger. The old value
    comes back when the last concurrent run ends (non-dumpable, even the harness cannot read
    its own /proc/self/environ, and py-spy or gdb cannot attach)."""
    libc = _libc()
    if libc is None:
        yield False
        return
    with _undumpable_lock:
        if _undumpable["runs"] == 0:
            _undumpable["before"] = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
            _undumpable["ok"] = libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
        _undumpable["runs"] += 1
    try:
        yield _undumpable["ok"]
    finally:
        with _undumpable_lock:
            _undumpable["runs"] -= 1
            if _undumpable["runs"] == 0 and _undumpable["before"] > 0:
                libc.prctl(4, _undumpable["before"], 0, 0, 0)


def _homes_to_hide() -> list[str]:
    """The harness user's home (from HOME and from the password database)."""
    homes = [os.path.expanduser("~")]
    with contextlib.suppress(KeyError, ImportError):
        import pwd

        homes.append(pwd.getpwuid(os.geteuid()).pw_dir)
    return sorted({h for h in homes if h and os.path.isabs(h)})


def _read_report(path: str) -> tuple[set[str], tuple[str, ...]]:
    """The words the supervisor wrote (layers it got, "inside-bwrap") and its notes."""
    with open(path, "rb") as handle:
        words = handle.read(8192).decode("utf-8", errors="replace").split()
    notes = tuple(w[5:].replace("_", " ") for w in words if w.startswith("note:"))
    return set(words), notes


# What a backend must give for "auto" to take it: the layers that stop the bypasses.
_NAMESPACE_LAYERS = ("pid-namespace", "net-namespace", "read-only-fs", "private-tmp")
_BWRAP_LAYERS = (
    "bwrap",
    "pid-namespace",
    "private-proc",
    "net-namespace",
    "ipc-namespace",
    "read-only-fs",
    "private-tmp",
)
_BWRAP_PROGRAM = "/tmp/.labkit-program.py"


def _backend(limits: SandboxLimits) -> str:
    if limits.backend == "bwrap" and shutil.which("bwrap") is None:
        raise LabkitError(
            "SandboxLimits.backend='bwrap' but bwrap is not installed "
            "(Debian/Ubuntu: apt-get install bubblewrap); valid here: auto, unshare, none"
        )
    if limits.backend != "auto":
        return limits.backend
    return _auto_backend(limits.run_as, limits.python)


@lru_cache(maxsize=8)
def _auto_backend(run_as: str | None, python: str | None) -> str:
    """unshare(2) from Python where it builds the namespaces; else bubblewrap where it is
    installed and does (Ubuntu 24.04 lets only bwrap's AppArmor profile use user namespaces;
    older systems install bwrap setuid). Decided once per process by a probe program."""
    if not sys.platform.startswith("linux"):
        return "none"
    for backend in ("unshare", "bwrap"):
        if backend == "bwrap" and shutil.which("bwrap") is None:
            continue
        limits = SandboxLimits(run_as=run_as, python=python, backend=backend)
        probe = check_program("pass\n", timeout=30, limits=limits)
        if probe.passed and set(_NAMESPACE_LAYERS) <= set(probe.layers):
            return backend
    return "unshare"  # the portable layers and whatever the kernel allowed


def _bwrap_argv(interpreter: str, disk_bytes: int, program_fd: int) -> tuple[list[str], bool]:
    """bubblewrap's part of the command line, building the file system the unshare path builds:
    every mount read-only, /dev minimal and read-only, /proc private and read-only, /tmp a
    tmpfs of `disk_bytes` (the total the program can write; /var/tmp and /dev/shm stay
    read-only), the harness user's home an empty tmpfs with the interpreter bound back.
    Returns (argv, whether every home is hidden)."""
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc"]
    if os.geteuid() != 0:  # root keeps its capabilities (to drop to nobody); others need a userns
        argv += ["--unshare-user", "--disable-userns"]
    argv += ["--unshare-uts", "--die-with-parent", "--ro-bind", "/", "/"]
    argv += ["--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc", "--remount-ro", "/proc"]
    argv += ["--size", str(disk_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    # the interpreter's prefix (bin/..), for the venv and for the Python it points to
    keep = {
        os.path.dirname(os.path.dirname(path))
        for path in (os.path.realpath(interpreter), os.path.abspath(interpreter))
    }
    for path in sorted(k for k in keep if k.startswith("/tmp" + os.sep)):
        argv += ["--ro-bind", path, path]  # a venv inside /tmp (a project cloned there)
    hidden, covered = True, ["/tmp"]
    for home in sorted(os.path.realpath(h) for h in _homes_to_hide()):
        if home == "/" or not os.path.isdir(home):
            continue
        if any(home == c or home.startswith(c + os.sep) for c in covered):
            continue  # already under the private /tmp or a hidden home
        if home in keep:
            hidden = False
            continue
        argv += ["--tmpfs", home]
        covered.append(home)
        for path in sorted(k for k in keep if k.startswith(home + os.sep)):
            argv += ["--ro-bind", path, path]
        argv += ["--remount-ro", home]
    argv += ["--file", str(program_fd), _BWRAP_PROGRAM, "--chdir", "/tmp", "--"]
    return argv, hidden


def _supervise(argv, files, workdir, env, token, marker, timeout):
    """Start the supervisor, hand it the token, wait for it up to the timeout, then make sure
    nothing of the run is left. Returns (proc, timed_out); OSError if it cannot start."""
    out, err, tok, rep, source = files
    # the supervisor keeps the harness's user (root can build namespaces, and a program running
    # as nobody cannot signal it); the program's own process drops privileges
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=err,
        cwd=workdir,
        env=env,
        start_new_session=True,
        pass_fds=(tok.fileno(), rep.fileno(), source.fileno()),
    )
    with contextlib.suppress(OSError):
        proc.stdin.write((token + "\n").encode())
        proc.stdin.close()
    timed_out = not _wait_for_exit(proc, timeout)
    if timed_out:
        # the supervisor kills its whole tree (the namespace, or every adopted orphan)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        _wait_for_exit(proc, 0.5)
    _kill_run(proc.pid, marker)
    proc.wait()
    return proc, timed_out


def check_program(
    program: str, timeout: float = 3.0, limits: SandboxLimits | None = None
) -> SandboxResult:
    """Run `program` (source code; its tests included) in the sandbox and classify the outcome."""
    if os.name != "posix":
        raise LabkitError("the sandbox needs a POSIX system (Linux or macOS); this is " + os.name)
    if not isinstance(program, str):
        raise LabkitError(
            f"program must be a string of Python source, not {type(program).__name__}"
        )
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= 600):
        raise LabkitError(f"timeout={timeout!r}: valid is a number of seconds in (0, 600]")
    limits = _limits(limits)
    identity, interpreter = _isolation(limits.run_as, limits.python)
    backend = _backend(limits)
    cpu = limits.cpu_seconds or math.ceil(timeout) + 1
    if identity is not None:
        nproc = _processes_of(identity[0]) + limits.max_processes
    elif hasattr(os, "getuid") and os.getuid() != 0:
        nproc = _processes_of(os.getuid()) + limits.max_processes
    else:
        nproc = limits.max_processes
    mib = 1024 * 1024
    rlimits = {
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_AS": (limits.memory_mb * mib,) * 2,
        "RLIMIT_FSIZE": (limits.file_size_mb * mib,) * 2,
        "RLIMIT_NOFILE": (limits.max_open_files,) * 2,
        "RLIMIT_NPROC": (nproc, nproc),
        "RLIMIT_CORE": (0, 0),
    }
    if not Path("/proc").is_dir():
        del rlimits["RLIMIT_NPROC"]  # cannot count the user's processes: a limit could block all
    layers = ["session", "rlimits", "supervisor"]
    if identity is not None:
        layers.append("other-user")
    token = secrets.token_hex(16)
    run_id = secrets.token_hex(8)
    marker = f"LABKIT_SANDBOX_RUN={run_id}"
    who = f"uid {identity[0]} ({limits.run_as})" if identity else f"uid {os.getuid()}"

    workdir = tempfile.mkdtemp(prefix="labkit-sandbox-")
    io_dir = tempfile.mkdtemp(prefix="labkit-sandbox-io-")  # the harness's side: never shared
    try:
        Path(workdir, "program.py").write_text(program, encoding="utf-8")
        if identity is not None:  # without a mount namespace the program works here
            os.chown(workdir, *identity)
            os.chown(Path(workdir, "program.py"), *identity)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": workdir,
            "TMPDIR": workdir,
            # inert under -I, kept for any interpreter the program manages to start without it
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "LABKIT_SANDBOX_RUN": run_id,  # finds the run's processes even outside its session
        }
        options = [f"--ns={int(backend == 'unshare')}", f"--disk={limits.disk_mb * mib}"]
        options += [f"--hide={home}" for home in _homes_to_hide()]
        if identity is not None:
            options += [f"--uid={identity[0]}", f"--gid={identity[1]}"]
        prefix, homes_hidden = [], False
        if backend == "bwrap":
            inner = "/tmp/" + os.path.basename(workdir)
            options += [f"--workdir={inner}", f"--program={_BWRAP_PROGRAM}"]
        paths = [os.path.join(io_dir, n) for n in ("out", "err", "token", "report")]
        out_path, err_path, token_path, report_path = paths
        with (
            open(out_path, "wb") as out,
            open(err_path, "wb") as err,
            open(token_path, "wb") as tok,
            open(report_path, "wb") as rep,
            open(Path(workdir, "program.py"), "rb") as source,
        ):
            if backend == "bwrap":
                prefix, homes_hidden = _bwrap_argv(
                    interpreter, limits.disk_mb * mib, source.fileno()
                )
            specs = [f"{name}:{soft}:{hard}" for name, (soft, hard) in rlimits.items()]
            closed = _harness_undumpable() if identity is None else contextlib.nullcontext(False)
            start = time.monotonic()
            try:
                with closed as undumpable:
                    if undumpable:
                        layers.append("harness-undumpable")
                    proc, timed_out = _supervise(
                        [*prefix, interpreter, "-I", "-S", "-c", _SUPERVISOR, str(tok.fileno())]
                        + [str(rep.fileno()), _WRAPPER, *options, *specs],
                        (out, err, tok, rep, source),
                        workdir,
                        env,
                        token,
                        marker,
                        timeout,
                    )
            except OSError as exc:
                return SandboxResult(
                    "error",
                    f"could not start the sandbox: {exc}",
                    0.0,
                    None,
                    isolation=f"{who}, {interpreter}",
                )
            wall = time.monotonic() - start
        stdout = _read_capped(out_path, limits.output_chars)
        stderr = _read_capped(err_path, limits.output_chars)
        full = [
            name
            for name, path in (("stdout", out_path), ("stderr", err_path))
            if os.path.getsize(path) >= limits.file_size_mb * mib
        ]
        with open(token_path, "rb") as handle:
            proven = handle.read(256) == token.encode()
        got, notes = _read_report(report_path)
        if "inside-bwrap" in got:  # bubblewrap builds all it was asked for, or nothing
            got.update(_BWRAP_LAYERS)
            if os.geteuid() != 0:
                got.add("user-namespace")
            if homes_hidden:
                got.add("home-hidden")
        layers += [layer for layer in LAYERS if layer in got]
        outcome, reason = _classify(
            proc.returncode, timed_out, proven, _read_tail(err_path), full, timeout, limits, cpu
        )
        if backend == "bwrap" and "inside-bwrap" not in got:
            outcome = "error"
            reason = "bubblewrap could not build the sandbox: " + _last_line(stderr)
        return SandboxResult(
            outcome,
            reason,
            round(wall, 3),
            proc.returncode,
            stdout,
            stderr,
            session=proc.pid,
            marker=marker,
            isolation=f"{who}, {interpreter}; layers: {', '.join(layers)}",
            workdir=workdir,
            layers=tuple(layers),
            notes=notes,
        )
    finally:
        _remove_tree(workdir)
        _remove_tree(io_dir)


def sandbox_report(limits: SandboxLimits | None = None) -> SandboxReport:
    """Run a trivial program and report which layers it got on this machine, in the mode that
    `limits` selects (root dropping to `run_as`, or the harness's own user)."""
    limits = _limits(limits)
    result = check_program("pass\n", timeout=30, limits=limits)
    identity, _ = _isolation(limits.run_as, limits.python)
    backend = _backend(limits)
    if identity is not None:
        mode = f"root harness, programs run as {limits.run_as} (uid {identity[0]})"
    else:
        user = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        mode = f"same user: programs run as the harness's user ({user})"
    mode += {
        "unshare": "; namespaces by unshare(2)",
        "bwrap": "; namespaces by bubblewrap",
        "none": "; namespaces turned off",
    }[backend]
    if result.outcome != "passed":
        return SandboxReport(
            mode, result.layers, (), (f"the probe program did not pass: {result.reason}",)
        )
    optional = ("user-namespace", "bwrap", "other-user", "harness-undumpable", "no-capabilities")
    expected = [layer for layer in LAYERS if layer not in optional]
    if identity is not None:
        expected.append("other-user")
    else:
        expected.append("harness-undumpable")
        if os.geteuid() == 0:
            expected.append("no-capabilities")
    missing = tuple(layer for layer in expected if layer not in result.layers)
    return SandboxReport(mode, result.layers, missing, result.notes)


def humaneval_program(task: Mapping, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then check(entry_point)."""
    task = validate_code_tasks([task])[0]
    if not isinstance(completion, str):
        raise LabkitError(f"completion must be a string of code, got {type(completion).__name__}")
    return (
        task["prompt"]
        + completion
        + "\n\n"
        + task["test"]
        + "\n\n"
        + f"check({task['entry_point']})\n"
    )


def validate_code_tasks(tasks: Sequence[Mapping]) -> list[dict]:
    if not tasks:
        raise LabkitError(
            "no code tasks: expected at least one {task_id, prompt, entry_point, test}"
        )
    checked = []
    for index, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise LabkitError(f"code task {index} is a {type(task).__name__}, not a dict")
        missing = [
            k
            for k in ("task_id", "prompt", "entry_point", "test")
            if not isinstance(task.get(k), str)
        ]
        if missing:
            raise LabkitError(
                f"code task {task.get('task_id', index)!r} lacks string field(s) {missing}"
            )
        checked.append(dict(task))
    return checked


def load_code_tasks(path) -> list[dict]:
    from .multiple_choice import read_jsonl

    return validate_code_tasks(read_jsonl(path, "code task"))


def evaluate_completions(
    tasks: Sequence[Mapping],
    completions: Mapping[str, Sequence[str]],
    timeout: float = 3.0,
    limits: SandboxLimits | None = None,
    workers: int = 1,
):
    """Run every completion of every task against its tests; one row per sample.

    completions: {task_id: [completion, ...]} (n samples per task, for pass@k).
    """
    import pandas as pd

    by_id = {t["task_id"]: t for t in validate_code_tasks(tasks)}
    workers = integer(workers, "workers", low=1)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0):
        raise LabkitError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(completions, Mapping):
        raise LabkitError("completions must be a dict {task_id: [completion, ...]}")
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise LabkitError(
            f"completions for unknown task ids {unknown[:5]}; known: {sorted(by_id)[:5]} ..."
        )
    jobs = []
    for task_id, samples in completions.items():
        if isinstance(samples, str) or not isinstance(samples, Sequence):
            raise LabkitError(f"completions[{task_id!r}] must be a list of completions (n samples "
                              f"for pass@k), got {type(samples).__name__}")
        for index, completion in enumerate(samples):
            if not isinstance(completion, str):
                raise LabkitError(
                    f"completions[{task_id!r}][{index}] is a {type(completion).__name__}, not "
                    "a string of code"
                )
            jobs.append((task_id, index, humaneval_program(by_id[task_id], completion)))
    if not jobs:
        raise LabkitError("completions is empty: give at least one completion")

    def run(job):
        task_id, index, program = job
        result = check_program(program, timeout=timeout, limits=limits)
        return {
            "task_id": task_id,
            "sample": index,
            "outcome": result.outcome,
            "passed": result.passed,
            "reason": result.reason,
            "wall_s": result.wall_s,
        }

    if workers <= 1:
        rows = [run(job) for job in jobs]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(run, jobs))
    return pd.DataFrame(rows)
