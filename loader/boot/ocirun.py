"""The OCI runner: hands the staged, verified image to a container runtime (podman).

Why podman and not crun with a generated bundle: podman unpacks the layers itself (whiteouts,
ownership, diff_id checks against the config), which we would otherwise have to reimplement
safely. The contract, in two commands:

1. `podman pull --quiet oci:<staged layout>` loads the staged layout, which holds only the
   verified blobs and one manifest (loader.measure.oci.stage_image). The image ID podman prints must be
   the verified config digest, else nothing runs.
2. `podman run --rm --pull=never --network=none --read-only --cap-drop=all
   --security-opt=no-new-privileges --mount type=bind,src=<staged datasets>,dst=/inputs/dataset,ro
   [--mount ...config ro] --mount type=bind,src=<output>,dst=/output --env TL_...=... <image id> [command]`
   runs it by that ID: no registry is contacted, no network unless `[run.oci] network` names
   one, inputs are read-only, /output is the only writable mount (the root is read-only; podman
   adds tmpfs /tmp and /run).

Placeholders in `run.command` expand to container paths ({dataset:NAME}, {datasets},
{config}, {output}); {engine} has no meaning here (the image's entrypoint is the engine). On
timeout the container is removed (`podman rm -f -t 0 NAME`) and the podman process group is
killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loader.boot.runner import StagedPaths, WorkloadResult, expand, supervise
from loader.errors import InputError, RunnerError

if TYPE_CHECKING:
    from loader.boot.config import RunSettings

INPUTS = Path("/inputs")
OUTPUT = Path("/output")
PULL_TIMEOUT = 600.0
_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UNSAFE_IN_MOUNT = (",", "\n", "\r", "\x00")


@dataclass(frozen=True)
class OciSettings:
    """`[run.oci]`: runtime executable, network ("none" or a podman network name), platform."""

    runtime_path: str = "podman"
    network: str = "none"
    platform: str | None = None

    def __post_init__(self) -> None:
        if not _NETWORK.fullmatch(self.network):
            raise RunnerError(f"run.oci.network: expected 'none' or a network name, found {self.network!r}")


def container_paths(paths: StagedPaths) -> StagedPaths:
    """The same inputs, as the workload sees them inside the container."""
    return StagedPaths(
        engine=Path("/"),
        config=INPUTS / "config" if paths.config is not None else None,
        datasets={name: INPUTS / "dataset" / name for name in paths.datasets},
        datasets_dir=INPUTS / "dataset",
        output=OUTPUT,
        logs=paths.logs,
    )


def _mount(src: Path, dst: Path, readonly: bool) -> list[str]:
    text = str(src)
    if any(c in text for c in _UNSAFE_IN_MOUNT):
        raise RunnerError(f"{src}: staged path contains a character podman --mount cannot carry")
    return ["--mount", f"type=bind,src={text},dst={dst}" + (",ro" if readonly else "")]


def _environment(inside: StagedPaths, extra: Mapping[str, str]) -> list[str]:
    env = {"TL_DATASETS": str(inside.datasets_dir), "TL_OUTPUT": str(inside.output)}
    if inside.config is not None:
        env["TL_CONFIG"] = str(inside.config)
    for name, path in inside.datasets.items():
        env["TL_DATASET_" + re.sub(r"[^A-Z0-9]", "_", name.upper())] = str(path)
    env.update(extra)
    return [arg for key, value in sorted(env.items()) for arg in ("--env", f"{key}={value}")]


def run_argv(
    settings: OciSettings,
    image_id: str,
    command: tuple[str, ...],
    paths: StagedPaths,
    *,
    name: str,
    extra_env: Mapping[str, str],
    user: str | None = None,
) -> list[str]:
    """The `podman run` command line (see the module docstring); `user` "UID:GID" for --user."""
    if any("{engine}" in arg for arg in command):
        raise RunnerError("run.command: {engine} has no meaning with runtime 'oci'; the image is the engine")
    inside = container_paths(paths)
    argv = [
        settings.runtime_path,
        "run",
        "--rm",
        "--pull=never",
        f"--name={name}",
        f"--network={settings.network}",
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
    ]
    if user is not None:
        argv.append(f"--user={user}")
    if paths.datasets:
        argv += _mount(paths.datasets_dir, inside.datasets_dir, readonly=True)
    if paths.config is not None and inside.config is not None:
        argv += _mount(paths.config, inside.config, readonly=True)
    argv += _mount(paths.output, OUTPUT, readonly=False)
    argv += _environment(inside, extra_env)
    argv.append(image_id.removeprefix("sha256:"))
    argv += [expand(arg, inside) for arg in command]
    return argv


def _runtime_env() -> dict[str, str]:
    keep = ("XDG_RUNTIME_DIR", "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "HOME")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    return env


def load_image(settings: OciSettings, layout: Path, image_id: str) -> str | None:
    """`podman pull` the staged layout; None if the runtime reports the verified image ID, else why not."""
    argv = [settings.runtime_path, "pull", "--quiet", f"oci:{layout}"]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=_runtime_env(),
            stdin=subprocess.DEVNULL,
            timeout=PULL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot load the image with {settings.runtime_path}: {exc}"
    if done.returncode != 0:
        return f"{settings.runtime_path} pull failed ({done.returncode}): {done.stderr.strip()[-300:]}"
    lines = done.stdout.strip().splitlines()
    loaded = lines[-1].strip().removeprefix("sha256:") if lines else ""
    if loaded != image_id.removeprefix("sha256:"):
        return f"{settings.runtime_path} loaded image {loaded or '(none)'}, the verified image is {image_id}"
    return None


def staged_image_id(layout: Path, platform: str | None) -> str:
    """The config digest of the image staged at `layout` (its blobs were verified on staging)."""
    from loader.measure import oci

    with oci.open_source(layout) as src:
        return oci.resolve(
            src, oci.Platform.host() if platform is None else oci.Platform.parse(platform)
        ).image_id


def run_oci(
    settings: OciSettings,
    layout: Path,
    image_id: str,
    command: tuple[str, ...],
    paths: StagedPaths,
    *,
    name: str,
    timeout: float,
    extra_env: Mapping[str, str],
    user: tuple[int, int] | None = None,
) -> WorkloadResult:
    paths.output.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is not None:
        os.chown(paths.output, *user)
    spec = None if user is None else f"{user[0]}:{user[1]}"
    argv = run_argv(settings, image_id, command, paths, name=name, extra_env=extra_env, user=spec)
    start = time.monotonic()
    if (problem := load_image(settings, layout, image_id)) is not None:
        return WorkloadResult(None, False, time.monotonic() - start, problem)
    from loader.boot.runner import checked_output
    from loader.boot.sandbox import take_back

    result = supervise(
        argv,
        env=_runtime_env(),
        cwd=None,
        logs=paths.logs,
        timeout=timeout,
        on_stop=lambda: _remove(settings, name),
        start=start,
    )
    return checked_output(result, take_back(paths.output, chown=user is not None))


def _remove(settings: OciSettings, name: str) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [settings.runtime_path, "rm", "--force", "--time", "0", name],
            capture_output=True,
            env=_runtime_env(),
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )


def oci_mismatch(runtime: str, engine_kind: str | None) -> str | None:
    """Why this runtime cannot run this engine, or None: OCI images need runtime 'oci' and back."""
    if runtime == "oci" and engine_kind != "oci":
        return f"run.runtime is 'oci' but the engine was measured as a {engine_kind}, not an OCI image"
    if runtime != "oci" and engine_kind == "oci":
        return 'the engine is an OCI image: set [run] runtime = "oci" (or engine_format = "plain")'
    return None


def run_staged_image(
    run: RunSettings, paths: StagedPaths, *, name: str, user: tuple[int, int] | None = None
) -> WorkloadResult:
    """Run the engine staged as an OCI layout at paths.engine, per `[run]` and `[run.oci]`;
    as `user` (uid, gid) when given (the engine's identity, loader.boot.sandbox)."""
    settings = run.oci or OciSettings()
    try:
        image_id = staged_image_id(paths.engine, settings.platform)
        return run_oci(
            settings,
            paths.engine,
            image_id,
            run.command,
            paths,
            name=name,
            timeout=run.timeout,
            extra_env=dict(run.env),
            user=user,
        )
    except (RunnerError, InputError) as exc:
        return WorkloadResult(None, False, 0.0, str(exc))
