"""The process runner: starts the engine from the staged copy, with a timeout.

Placeholders in the configured command are replaced with staged paths only: {engine},
{config}, {dataset:NAME}, {datasets}, {output}. The environment is minimal and names the same
staged paths (TL_ENGINE, TL_CONFIG, TL_DATASET_<NAME>, TL_DATASETS, TL_OUTPUT), so nothing in
the engine's view points at an original input.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loader.errors import RunnerError

if TYPE_CHECKING:
    from loader.boot.sandbox import Sandbox

KILL_GRACE = 5.0
_PLACEHOLDER = re.compile(r"\{([a-z]+)(?::([A-Za-z0-9._-]+))?\}")


@dataclass(frozen=True)
class WorkloadResult:
    exit_code: int | None
    timed_out: bool
    seconds: float
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


@dataclass(frozen=True)
class StagedPaths:
    engine: Path
    config: Path | None
    datasets: Mapping[str, Path]
    datasets_dir: Path
    output: Path
    logs: Path


def expand(arg: str, paths: StagedPaths) -> str:
    def one(match: re.Match[str]) -> str:
        key, name = match.group(1), match.group(2)
        if key == "engine" and name is None:
            return str(paths.engine)
        if key == "config" and name is None and paths.config is not None:
            return str(paths.config)
        if key == "dataset" and name in paths.datasets:
            return str(paths.datasets[name])
        if key == "datasets" and name is None:
            return str(paths.datasets_dir)
        if key == "output" and name is None:
            return str(paths.output)
        raise RunnerError(f"run.command: unknown placeholder {match.group(0)!r}")

    return _PLACEHOLDER.sub(one, arg)


def environment(paths: StagedPaths, extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(paths.output),
        "TL_ENGINE": str(paths.engine),
        "TL_DATASETS": str(paths.datasets_dir),
        "TL_OUTPUT": str(paths.output),
    }
    if paths.config is not None:
        env["TL_CONFIG"] = str(paths.config)
    for name, path in paths.datasets.items():
        env["TL_DATASET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())] = str(path)
    env.update(extra)
    return env


def run_process(
    command: tuple[str, ...],
    paths: StagedPaths,
    *,
    timeout: float,
    extra_env: Mapping[str, str],
    sandbox: Sandbox | None = None,
) -> WorkloadResult:
    """Run the engine; contained in `sandbox` unless it is None (`[run] isolation = "none"`)."""
    argv = [expand(a, paths) for a in command]
    paths.output.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = environment(paths, extra_env)
    from loader.boot.sandbox import grant_access, take_back

    if sandbox is None:
        result = supervise(argv, env=env, cwd=paths.output, logs=paths.logs, timeout=timeout)
        return checked_output(result, take_back(paths.output, chown=False))

    grant_access(sandbox, paths)
    status_r, status_w = os.pipe()
    with os.fdopen(status_r, "r", errors="replace") as status:
        wrapped = sandbox.wrap(argv, env, paths, status_w)
        result = supervise(
            wrapped, env={"PATH": env["PATH"]}, cwd=None, logs=paths.logs, timeout=timeout, give=(status_w,)
        )
        said = status.read(4096).strip()
    problem = take_back(paths.output, chown=not sandbox.identity.user_namespace)
    if said != "ready":
        why = said or f"unshare exited with {result.exit_code} before the sandbox was ready (logs/stderr.log)"
        return WorkloadResult(None, False, result.seconds, f"containment: {why}")
    return checked_output(result, problem)


def checked_output(result: WorkloadResult, problem: str | None) -> WorkloadResult:
    """`result`, with `problem` (from loader.boot.sandbox.take_back) as its error when there is one."""
    if problem is None:
        return result
    return WorkloadResult(result.exit_code, result.timed_out, result.seconds, result.error or problem)


def supervise(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    logs: Path,
    timeout: float,
    on_stop: Callable[[], None] = lambda: None,
    start: float | None = None,
    give: tuple[int, ...] = (),
) -> WorkloadResult:
    """Run `argv` in its own session with output to logs/, stopping its process group (after
    `on_stop`) at the timeout or when the loader itself is interrupted. The descriptors in
    `give` are inherited by the child and closed here once it started (or failed to)."""
    start = time.monotonic() if start is None else start
    with open(logs / "stdout.log", "wb") as out, open(logs / "stderr.log", "wb") as err:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                pass_fds=give,
            )
        except OSError as exc:
            return WorkloadResult(None, False, 0.0, f"cannot start {argv[0]}: {exc.strerror}")
        finally:
            for fd in give:
                os.close(fd)
        try:
            code = proc.wait(timeout=timeout)
            return WorkloadResult(code, False, time.monotonic() - start, None)
        except subprocess.TimeoutExpired:
            on_stop()
            _terminate(proc)
            return WorkloadResult(proc.returncode, True, time.monotonic() - start, None)
        except BaseException:
            on_stop()
            _terminate(proc)  # the loader is being stopped: never leave the engine running
            raise


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
