"""What `run` validates before it attests, in one place: `config check` calls the same code.

load_config checks the file's shape (types, known keys). This module checks what the file
means on this machine: placeholders in run.command, the extras a configured feature needs,
the directories the loader will write, and the modes of secret files. Each refusal is a
ConfigError naming the configuration file and the key, so `run` stops with exit 2 before
it attests, hashes or writes anything, and `config check` refuses what `run` would refuse.

Missing inputs, approved list or signer keys are not refusals: `run` aborts on them with a
signed report (the report is the record of what was missing), so they come back as warnings.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from loader.boot.config import LoaderConfig
from loader.boot.publish_settings import PublishSettings
from loader.boot.runner import StagedPaths, expand
from loader.errors import ConfigError, RunnerError

# configured feature -> (the extra that provides it, the modules it imports)
_EXTRAS = {
    "publish.evm": ("chain", ("web3",)),
    "gpu.mode": ("nvidia", ("pynvml", "signxml", "lxml")),
}


def preflight(cfg: LoaderConfig, publish: PublishSettings | None = None) -> list[str]:
    """Refuse (ConfigError) what `run` would refuse; return warnings about what it would abort on."""
    publish = cfg.publish if publish is None else publish
    check_command(cfg)
    check_extras(cfg, publish)
    check_writable(cfg, publish)
    check_secret_files(cfg, publish)
    return missing_paths(cfg)


def _error(cfg: LoaderConfig, key: str, message: str) -> ConfigError:
    return ConfigError(f"{cfg.path}: {key}: {message}")


def check_command(cfg: LoaderConfig) -> None:
    """Every placeholder expands, exactly as the runner will expand it (same function)."""
    datasets = {s.name: Path("/dataset") / s.name for s in cfg.inputs if s.role == "dataset"}
    has_config = any(s.role == "config" for s in cfg.inputs)
    sample = StagedPaths(
        engine=Path("/engine"),
        config=Path("/config") if has_config else None,
        datasets=datasets,
        datasets_dir=Path("/datasets"),
        output=Path("/output"),
        logs=Path("/logs"),
    )
    for index, arg in enumerate(cfg.run.command):
        key = f"run.command[{index}]"
        if cfg.run.runtime == "oci" and "{engine}" in arg:
            raise _error(cfg, key, "{engine} has no meaning with runtime 'oci'; the image is the engine")
        try:
            expand(arg, sample)
        except RunnerError as exc:
            raise _error(cfg, key, _placeholder_hint(str(exc), has_config, sorted(datasets))) from None


def _placeholder_hint(message: str, has_config: bool, datasets: list[str]) -> str:
    found = message.split(": ", 1)[-1]
    known = ["{engine}", "{datasets}", "{output}"]
    known += ["{config}"] if has_config else []
    known += [f"{{dataset:{n}}}" for n in datasets]
    return f"{found}; expected one of {', '.join(known)}"


def check_extras(cfg: LoaderConfig, publish: PublishSettings) -> None:
    """The optional packages a configured feature imports are installed and importable."""
    if publish.evm is not None:
        require_extra(cfg, "publish.evm")
    if cfg.gpu_mode == "nvml":
        require_extra(cfg, "gpu.mode")


def require_extra(cfg: LoaderConfig, key: str) -> None:
    """The modules the feature configured at `key` imports, each installed and importable."""
    extra, modules = _EXTRAS[key]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise _error(
                cfg, key, f"needs {module}, which is not installed: pip install 'cvm-trusted-loader[{extra}]'"
            )
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = exc.name or "a dependency"
            raise _error(
                cfg,
                key,
                f"{module} is installed but cannot be imported ({missing} is missing): "
                f"reinstall with pip install 'cvm-trusted-loader[{extra}]'",
            ) from None


def written_dirs(cfg: LoaderConfig, publish: PublishSettings) -> Iterable[tuple[str, Path]]:
    yield "staging_dir", cfg.staging_dir
    yield "spool_dir", cfg.spool_dir
    yield "output_dir", cfg.output_dir
    if publish.file_dir is not None:
        yield "publish.file.dir", publish.file_dir
    if cfg.grants is not None:
        yield "grants.dir", cfg.grants.dir
        yield "grants.cert_out", cfg.grants.cert_out.parent


def check_writable(cfg: LoaderConfig, publish: PublishSettings) -> None:
    """Each directory the loader writes is a writable directory, or can be created as one.

    Nothing is created here: the nearest existing ancestor must be a writable directory.
    """
    for key, path in written_dirs(cfg, publish):
        problem = writable_problem(path)
        if problem:
            raise _error(cfg, key, problem)


def writable_problem(path: Path) -> str | None:
    """Why the loader could not write in (or create) `path`, or None."""
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            return f"{probe}: a dangling symbolic link"
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"expected a directory (or a path that can be created), but {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        how = "read-only file system" if _read_only_fs(probe) else "no write permission"
        return f"{probe} is not writable ({how})"
    return None


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_secret_files(cfg: LoaderConfig, publish: PublishSettings) -> None:
    """Secret files exist, are regular and are private (the same reader `run` uses)."""
    if publish.evm is not None and publish.evm.account_key_file is not None:
        from loader.publish.keyfile import read_account_key

        try:
            read_account_key(publish.evm.account_key_file)
        except ConfigError as exc:
            raise _error(cfg, "publish.evm.account_key_file", str(exc)) from None


def missing_paths(cfg: LoaderConfig) -> list[str]:
    """Inputs and files that do not exist: `run` would abort on them with a signed report."""
    wanted: list[tuple[str, Path]] = [("policy.path", cfg.policy_path)]
    for spec in cfg.inputs:
        key = f"inputs.{spec.role}" if spec.role != "dataset" else f"inputs.datasets.{spec.name}"
        wanted.append((key, spec.path))
    if cfg.signing is not None:
        wanted += [(f"policy.signers.{n}", p) for n, p in cfg.signing.signers]
        wanted += [("policy.signatures", p) for p in cfg.signing.signatures]
    if cfg.ca_cert is not None:
        wanted.append(("ca.ca_cert", cfg.ca_cert))
    if cfg.output_recipient is not None:
        wanted.append(("output.recipient", cfg.output_recipient))
    return [
        f"{cfg.path}: {key}: {path} does not exist; run would abort with a signed report"
        for key, path in wanted
        if not path.exists()
    ]
