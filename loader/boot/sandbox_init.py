"""Init of the engine's sandbox: runs as PID 1 of a fresh PID namespace, started by `unshare`.

Standard library only, run as `python -I -S sandbox_init.py SPEC FD`: it builds the engine's
view of the file system on an empty tmpfs (system directories and staged inputs read-only, the
output directory writable, private /tmp, a minimal /dev, a /proc of this namespace only),
pivots into it and detaches the old root, then forks the engine with no capability, no
bounding set, `no_new_privs` and (as real root) the engine's own uid and gid. It waits for the
engine's main process and exits with its status: the kernel then kills every other process of
the namespace before `unshare`, and so the loader, sees the exit.

Setup errors are written to FD (a pipe to the loader) and end the init with status 125 before
the engine exists. FD is closed before the engine is forked.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SECURE_ALL = 0x3F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and their locks
_LOCKED_FLAGS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME}
_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if v is None else v.encode() for v in (src, dst, fstype, data)]
    result = _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3])
    _check(result, f"mount {src or fstype} on {dst}")


def prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0), f"prctl({option})")


def bind(root: str, src: str, dst: str, *, writable: bool) -> None:
    target = root + dst
    if os.path.isdir(src):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
    mount(src, target, None, MS_BIND | MS_REC)
    # A remount must keep the flags the source mount has (the kernel locks them in a user namespace).
    kept = sum(ms for st, ms in _LOCKED_FLAGS.items() if os.statvfs(target).f_flag & st)
    flags = kept | MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY)
    mount(None, target, None, flags)


def build_root(spec: dict) -> None:  # type: ignore[type-arg]
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in ("null", "zero", "full", "random", "urandom"):
        bind(root, "/dev/" + name, "/dev/" + name, writable=True)
        mount(None, root + "/dev/" + name, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    for src, dst in spec["devices"]:
        bind(root, src, dst, writable=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, root + "/dev/" + name)
    os.symlink("/proc/self/fd/1", root + "/dev/stdout")
    os.symlink("/proc/self/fd/2", root + "/dev/stderr")
    # The engine's private /dev/shm and /tmp: fresh tmpfs in its own mount namespace.
    shm, tmp = root + "/dev/shm", root + "/tmp"  # noqa: S108
    os.makedirs(shm)
    mount("tmpfs", shm, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")
    os.makedirs(tmp, exist_ok=True)
    mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=" + spec["tmp_size"])
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for src, dst, writable in spec["binds"]:  # after /tmp: staging may live under it
        bind(root, src, dst, writable=writable)
    for target, path in spec["links"]:  # merged /usr: /bin -> usr/bin and so on
        os.symlink(target, root + path)
    for path in spec["masks"]:  # the loader's own files inside a directory the engine sees
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k")
        elif os.path.lexists(root + path):
            mount("/dev/null", root + path, None, MS_BIND)
            mount(None, root + path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if spec["hostname"]:  # cosmetic, in the private UTS namespace; ProtectHostname= may forbid it
        _libc.sethostname(spec["hostname"].encode(), len(spec["hostname"]))


def drop_privileges(spec: dict) -> None:  # type: ignore[type-arg]
    """No capability left in any set, no way to regain one, then the engine's identity."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) == 0:
        cap += 1
    if cap == 0:
        raise SetupError("cannot drop the capability bounding set")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl(PR_SET_SECUREBITS, SECURE_ALL)
    if spec["switch_user"]:
        os.setgroups([])
        os.setresgid(spec["gid"], spec["gid"], spec["gid"])
        os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def main() -> int:
    spec = json.loads(sys.argv[1])
    status = os.fdopen(int(sys.argv[2]), "w")
    try:
        prctl(PR_SET_DUMPABLE, 0)
        build_root(spec)
    except (SetupError, OSError) as exc:
        status.write(f"containment setup failed: {exc}\n")
        status.close()
        return 125
    status.write("ready\n")
    status.close()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(spec["cwd"])
            drop_privileges(spec)
            os.execvpe(spec["argv"][0], spec["argv"], spec["env"])  # noqa: S606 -- argv, no shell
        except (SetupError, OSError) as exc:
            os.write(2, f"sandbox: cannot start {spec['argv'][0]}: {exc}\n".encode())
        os._exit(127)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    while True:
        try:
            done, code = os.waitpid(-1, 0)
        except ChildProcessError:
            return 127
        except InterruptedError:
            continue
        if done == pid:
            return os.WEXITSTATUS(code) if os.WIFEXITED(code) else 128 + os.WTERMSIG(code)


if __name__ == "__main__":
    sys.exit(main())
