"""Containment of the process engine: its own identity and namespaces (docs/containment.md).

The kernel's primitives, driven by util-linux `unshare` (always present where the loader
runs) and a small standard-library init (loader/boot/sandbox_init.py) that builds the engine's file
system view, drops every capability and switches identity. As root the engine gets its own
uid/gid ([run] user, or uid/gid); as an unprivileged user (the demo) it runs without any
capability in a user namespace mapped to the loader's uid.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loader.errors import RunnerError

if TYPE_CHECKING:
    from loader.boot.config import RunSettings
    from loader.boot.runner import StagedPaths

UNSHARE = "/usr/bin/unshare"
INIT = Path(__file__).with_name("sandbox_init.py")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
MASKED = ("/etc/trusted-loader",)
TMP_SIZE = "1g"


class ContainmentError(RunnerError):
    """Containment cannot be set up as configured."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    user_namespace: bool
    """True when the loader is not root: the engine is root without capabilities in a user
    namespace that maps the loader's own uid."""


def resolve_identity(run: RunSettings, *, loader_uid: int | None = None) -> Identity:
    """The engine's identity: the configured uid/gid, else the configured account's."""
    loader_uid = os.getuid() if loader_uid is None else loader_uid
    if loader_uid != 0:
        return Identity(loader_uid, os.getgid(), user_namespace=True)
    if run.uid is not None:
        uid, gid = run.uid, run.gid if run.gid is not None else run.uid
    else:
        try:
            entry = pwd.getpwnam(run.user)
        except KeyError:
            raise ContainmentError(
                f"run.user: the engine account {run.user!r} does not exist; create it "
                "(install-unit and the image do) or set [run] uid and gid"
            ) from None
        uid, gid = entry.pw_uid, run.gid if run.gid is not None else entry.pw_gid
    if uid in (0, loader_uid) or gid == 0:
        raise ContainmentError(f"run.uid: the engine may not be root or the loader's uid, found {uid}:{gid}")
    return Identity(uid, gid, user_namespace=False)


def check_available(identity: Identity) -> None:
    if not os.access(UNSHARE, os.X_OK):
        raise ContainmentError(f"{UNSHARE} not found: install util-linux, or set [run] isolation = 'none'")
    if identity.user_namespace:
        try:
            limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
        except (OSError, ValueError):
            limit = 1
        if limit == 0:
            raise ContainmentError(
                "this kernel allows no user namespaces (user.max_user_namespaces = 0) and the loader is "
                "not root: run it as root, or set [run] isolation = 'none'"
            )


@dataclass(frozen=True)
class Sandbox:
    identity: Identity
    network: str
    devices: tuple[str, ...]
    root: Path
    exposed: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()

    @property
    def namespaces(self) -> list[str]:
        names = ["pid", "mount", "ipc", "uts"] + (["net"] if self.network == "none" else [])
        return names + (["user"] if self.identity.user_namespace else [])

    def record(self) -> dict[str, Any]:
        return {
            "isolation": "namespaces",
            "runner": "process",
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "user_namespace": self.identity.user_namespace,
            "namespaces": self.namespaces,
            "network": self.network,
            "devices": list(self.devices),
        }

    def wrap(
        self, argv: list[str], env: dict[str, str], paths: StagedPaths, status_fd: int, *, python: str = ""
    ) -> list[str]:
        """The command line that runs `argv` contained (see the module docstring)."""
        binds = [[d, d, False] for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
        binds += [[str(p), str(p), False] for p in self.exposed]
        inputs = paths.datasets_dir.parent
        if inputs.is_dir():
            binds.append([str(inputs), str(inputs), False])
        binds.append([str(paths.output), str(paths.output), True])
        spec = {
            "root": str(self.root),
            "binds": binds,
            "devices": [[d, "/dev/" + os.path.basename(d)] for d in self.devices],
            "links": [[os.readlink(d), d] for d in SYSTEM_DIRS if os.path.islink(d)],
            "masks": [*MASKED, *self.masked],
            "tmp_size": TMP_SIZE,
            "hostname": "engine",
            "cwd": str(paths.output),
            "argv": [os.path.realpath(argv[0]) if os.path.isabs(argv[0]) else argv[0], *argv[1:]],
            "env": env,
            "switch_user": not self.identity.user_namespace,
            "uid": self.identity.uid,
            "gid": self.identity.gid,
        }
        flags = ["--pid", "--fork", "--kill-child", "--mount", "--ipc", "--uts", "--propagation", "private"]
        if self.network == "none":
            flags.append("--net")
        if self.identity.user_namespace:
            flags += ["--user", "--map-root-user"]
        interpreter = python or sys.executable
        return [UNSHARE, *flags, "--", interpreter, "-I", "-S", str(INIT), json.dumps(spec), str(status_fd)]


def gpu_devices(tee_root: Path, gpu_mode: str) -> tuple[str, ...]:
    """The GPU device nodes passed to the engine: <tee root>/dev/nvidia*, only when [gpu] is on."""
    if gpu_mode == "none":
        return ()
    return tuple(sorted(glob.glob(str(tee_root / "dev" / "nvidia*"))))


def check_settings(run: RunSettings) -> Identity | None:
    """What `run` checks before it starts the engine, and `config check` checks too: the
    engine's identity and (for the process runner) the sandbox's tools. None: no isolation."""
    if run.isolation == "none":
        return None
    identity = resolve_identity(run)
    if run.runtime == "process":
        check_available(identity)
    return identity


def plan(
    run: RunSettings, *, tee_root: Path, gpu_mode: str, workdir: Path, private: tuple[Path, ...] = ()
) -> Sandbox:
    """The engine's sandbox. `private`: the loader's own paths (configuration, state, TEE tree):
    an `expose` entry that holds one is refused; the configuration file is masked where a
    system directory (such as /etc) holds it."""
    identity = check_settings(run)
    assert identity is not None, "plan() is for isolation 'namespaces'"
    for exposed in run.expose:
        for path in private:
            if path == exposed or exposed in path.parents:
                raise ContainmentError(f"run.expose: {exposed} holds the loader's {path}; expose less")
    masks = [  # not the staging directory: the engine's inputs and output are bound inside it
        str(p)
        for p in private
        if any(p.is_relative_to(d) for d in SYSTEM_DIRS) and not workdir.is_relative_to(p)
    ]
    root = workdir / "root"
    root.mkdir(mode=0o700, exist_ok=True)
    devices = gpu_devices(tee_root, gpu_mode)
    return Sandbox(identity, run.network, devices, root, tuple(map(str, run.expose)), tuple(masks))


def grant_access(sandbox: Sandbox, paths: StagedPaths) -> None:
    """Let the engine's gid read the staged inputs and its uid own the output directory."""
    if sandbox.identity.user_namespace:
        return
    gid = sandbox.identity.gid
    inputs = paths.datasets_dir.parent
    for dirpath, _dirs, filenames in os.walk(inputs) if inputs.is_dir() else ():
        os.chown(dirpath, 0, gid)
        os.chmod(dirpath, 0o750)  # noqa: S103 -- group = the engine's gid only
        for name in filenames:
            target = os.path.join(dirpath, name)
            os.chown(target, 0, gid, follow_symlinks=False)
            os.chmod(target, 0o550 if os.stat(target).st_mode & 0o100 else 0o440)
    os.chown(paths.output, sandbox.identity.uid, gid)
    os.chmod(paths.output, 0o700)


MAX_OUTPUT_DEPTH = 128


def take_back(output: Path, *, chown: bool) -> str | None:
    """Once every engine process is gone: check the output tree (no recursion, so a hostile tree
    cannot crash the loader before it signs) and, with `chown`, give it back to the loader (owner
    rw) so it is measured and moved without CAP_DAC_OVERRIDE. Returns why the output was
    discarded, or None."""
    owner = (os.getuid(), os.getgid())
    stack = [(output, 0)]
    try:
        while stack:
            path, depth = stack.pop()
            if depth > MAX_OUTPUT_DEPTH:
                _discard(output)
                return f"output: deeper than {MAX_OUTPUT_DEPTH} directories; discarded"
            if chown:
                os.lchown(path, *owner)
                os.chmod(path, 0o700)
            with os.scandir(path) as entries:
                for entry in entries:
                    if chown:
                        os.lchown(entry.path, *owner)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), depth + 1))
                    elif chown and not entry.is_symlink():
                        mode = entry.stat(follow_symlinks=False).st_mode & 0o777
                        os.chmod(entry.path, mode | 0o600)
    except OSError as exc:
        _discard(output)
        return f"output: cannot take it back from the engine ({exc.strerror}); discarded"
    return None


def _discard(output: Path) -> None:
    """Remove a hostile output tree with coreutils (no recursion limit), leaving an empty directory."""
    import subprocess

    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(output)], check=False, timeout=600)
    output.mkdir(mode=0o700, exist_ok=True)


PR_SET_DUMPABLE = 4


def make_non_dumpable() -> None:
    """PR_SET_DUMPABLE 0: no other process of our uid may ptrace us or read /proc/<pid>/mem."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise ContainmentError(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")
