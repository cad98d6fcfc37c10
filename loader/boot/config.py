"""The loader configuration: one TOML file, validated at start.

Relative paths are resolved against the directory of the configuration file, so a job
directory can be moved as a whole. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loader.boot.ocirun import OciSettings
from loader.boot.publish_settings import PublishSettings, parse_publish
from loader.boot.stage import FORMATS, STAGING_MODES, WIPE_METHODS, InputSpec
from loader.errors import ConfigError, RunnerError
from loader.report.collateral import CollateralSettings, accept_list
from loader.report.policy import Execution, valid_name

MAX_CONFIG_BYTES = 256 * 1024
# Where state lives by default: writable under the unit's ProtectSystem=strict (StateDirectory),
# unlike the configuration's own directory (/etc/trusted-loader), which is read-only there.
STATE_DIR = Path("/var/lib/trusted-loader")
DEFAULT_TIMEOUT = 3600
ENGINE_USER = "trusted-loader-engine"
ISOLATIONS = ("namespaces", "none")
NETWORKS = ("none", "host")


@dataclass(frozen=True)
class RunSettings:
    command: tuple[str, ...]
    timeout: float
    env: tuple[tuple[str, str], ...]
    runtime: str = "process"
    oci: OciSettings | None = None
    isolation: str = "namespaces"
    """"namespaces" (the engine is contained, docs/containment.md) or "none" (explicitly not)."""
    network: str = "none"
    """"none" (a network namespace with nothing in it) or "host"."""
    user: str = ENGINE_USER
    uid: int | None = None
    gid: int | None = None
    expose: tuple[Path, ...] = ()
    """Host paths the engine sees read-only besides the system directories (an interpreter)."""

    def execution(self, recipient: str | None) -> Execution:
        """How this configuration runs the engine, in the approved list's terms (loader/report/policy.py)."""
        return Execution(
            runtime=self.runtime,
            command=self.command,
            env=self.env,
            network=self.oci.network if self.oci is not None else self.network,
            timeout_ms=round(self.timeout * 1000),
            platform=self.oci.platform if self.oci is not None else None,
            recipient=recipient,
            isolation=self.isolation,
        )


@dataclass(frozen=True)
class SigningSettings:
    """[policy] signers/required/signatures: who must have signed the approved list."""

    signers: tuple[tuple[str, Path], ...]
    required: tuple[str, ...]
    signatures: tuple[Path, ...]


@dataclass(frozen=True)
class GrantSettings:
    """[grants]: encrypted datasets, and where the loader publishes its certificate and waits."""

    dir: Path
    cert_out: Path
    timeout: float
    datasets: tuple[str, ...]
    poll: float = 0.2


@dataclass(frozen=True)
class LoaderConfig:
    path: Path
    tee: str
    tee_root: Path
    job_id: str
    policy_path: Path
    inputs: tuple[InputSpec, ...]
    staging_dir: Path
    spool_dir: Path
    output_dir: Path
    run: RunSettings
    ca_url: str | None
    gpu_mode: str = "none"
    ca_cert: Path | None = None
    """Pinned CA certificate (PEM): enrollment refuses a chain that does not end there."""
    ca_attempts: int = 5
    publish: PublishSettings = field(default_factory=PublishSettings)
    signing: SigningSettings | None = None
    grants: GrantSettings | None = None
    output_recipient: Path | None = None
    collateral: CollateralSettings = field(default_factory=CollateralSettings)
    wipe: str = "auto"


class _Section:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, data: dict[str, Any], where: str, source: Path) -> None:
        self.data, self.where, self.source = data, where, source
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._key(key)}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "missing (required)" + self._did_you_mean(key))
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.error(key, f"expected {_kind_name(kind)}, found {value!r}")
        return value

    def _did_you_mean(self, key: str) -> str:
        close = difflib.get_close_matches(key, [k for k in self.data if k not in self.used], n=1)
        return f"; found unknown key {self._key(close[0])!r} instead" if close else ""

    def table(self, key: str, required: bool = False) -> _Section:
        value = self.get(key, dict, ... if required else {})
        return _Section(value, self._key(key), self.source)

    def path(self, key: str, base: Path, default: str | None = None) -> Path:
        value = self.get(key, str, ... if default is None else default)
        if not value:
            raise self.error(key, "expected a path, found an empty string")
        return (base / value).resolve() if not Path(value).is_absolute() else Path(value)

    def optional_path(self, key: str, base: Path) -> Path | None:
        return self.path(key, base) if self.get(key, str, None) is not None else None

    def secret_path(self, key: str, base: Path) -> Path | None:
        """The path of a secret file: its TL_*_FILE environment override if set, else the key."""
        from loader.boot.secretfiles import override

        value = override(self._key(key))
        if value is not None:
            self.used.add(key)
            return Path(value)
        return self.optional_path(key, base)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], f"unknown key; expected one of {sorted(self.used)}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def load_config(path: Path, *, ca_url: str | None = None) -> LoaderConfig:
    from loader.boot.secretfiles import check_environment

    check_environment(os.environ)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read loader config: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return _parse(data, path.resolve(), ca_url)


def _parse(data: dict[str, Any], source: Path, ca_url: str | None) -> LoaderConfig:
    from attestation import TEE_TYPES

    base = source.parent
    top = _Section(data, "", source)
    tee = top.get("tee", str)
    if tee not in TEE_TYPES:
        raise top.error("tee", f"expected one of {list(TEE_TYPES)}, found {tee!r}")
    job_id = top.get("job_id", str, "")
    if job_id and not valid_name(job_id):
        raise top.error("job_id", f"expected 1-64 of [A-Za-z0-9._-], found {job_id!r}")
    policy = top.table("policy", required=True)
    policy_path = policy.path("path", base)
    signing = _signing(policy, base)
    policy.finish()
    run = _run(top.table("run", required=True), base)
    inputs = _inputs(top.table("inputs", required=True), base, run.oci.platform if run.oci else None)
    inputs, wipe = _staging(top.table("staging"), inputs)
    grants = _grants(top.table("grants"), base, inputs)
    output = top.table("output")
    recipient = output.optional_path("recipient", base)
    output.finish()
    attestation = top.table("attestation")
    tee_root = attestation.path("root", base, "/")
    attestation.finish()
    ca = top.table("ca")
    configured_url = ca.get("url", str, None)
    url = ca_url or configured_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ca.error("url", f"expected an http:// or https:// URL, found {url!r}")
    ca_cert = ca.optional_path("ca_cert", base)
    ca_attempts = ca.get("attempts", int, 5)
    if not 1 <= ca_attempts <= 20:
        raise ca.error("attempts", f"expected 1..20, found {ca_attempts}")
    ca.finish()
    gpu_mode = _gpu_mode(top.table("gpu"), tee)
    collateral = _collateral(top.table("collateral"), base)
    cfg = LoaderConfig(
        path=source,
        tee=tee,
        tee_root=tee_root,
        job_id=job_id,
        policy_path=policy_path,
        inputs=inputs,
        staging_dir=top.path("staging_dir", base, str(STATE_DIR / "staging")),
        spool_dir=top.path("spool_dir", base, str(STATE_DIR / "spool")),
        output_dir=top.path("output_dir", base, str(STATE_DIR / "output")),
        run=run,
        ca_url=url,
        gpu_mode=gpu_mode,
        ca_cert=ca_cert,
        ca_attempts=ca_attempts,
        publish=parse_publish(top.table("publish"), base),
        signing=signing,
        grants=grants,
        output_recipient=recipient,
        collateral=collateral,
        wipe=wipe,
    )
    top.finish()
    return cfg


def _collateral(section: _Section, base: Path) -> CollateralSettings:
    """[collateral]: where the platform's collateral comes from and which TCB statuses pass."""
    defaults = CollateralSettings()
    urls = {}
    for key in ("pccs_url", "kds_url", "rim_url"):
        url = section.get(key, str, getattr(defaults, key))
        if not url.startswith(("http://", "https://")):
            raise section.error(key, f"expected an http:// or https:// URL, found {url!r}")
        urls[key] = url
    try:
        accept = accept_list(section.get("accept_tcb", list, list(defaults.accept_tcb)))
    except ValueError as exc:
        raise section.error("accept_tcb", str(exc)) from exc
    timeout = section.get("timeout", (int, float), defaults.timeout)
    if not 0 < timeout <= 300:
        raise section.error("timeout", f"expected seconds between 0 and 300, found {timeout}")
    attempts = section.get("attempts", int, defaults.attempts)
    if not 1 <= attempts <= 10:
        raise section.error("attempts", f"expected 1..10, found {attempts}")
    ocsp_url = section.get("ocsp_url", str, None)
    if ocsp_url is not None and not ocsp_url.startswith(("http://", "https://")):
        raise section.error("ocsp_url", f"expected an http:// or https:// URL, found {ocsp_url!r}")
    product = section.get("snp_product", str, None)
    if product is not None and product.lower() not in ("milan", "genoa", "turin"):
        raise section.error("snp_product", f"expected milan, genoa or turin, found {product!r}")
    settings = CollateralSettings(
        **urls,
        accept_tcb=accept,
        offline_dir=section.optional_path("offline_dir", base),
        cache_dir=section.optional_path("cache_dir", base),
        timeout=float(timeout),
        attempts=attempts,
        snp_product=product,
        rim_root=section.optional_path("rim_root", base),
        ocsp_url=ocsp_url,
    )
    section.finish()
    return settings


def _gpu_mode(section: _Section, tee: str) -> str:
    """`[gpu] mode`: "none" (default), "nvml" (every CC-mode GPU through NVML) or "mock"."""
    from attestation.nvidia import GPU_MODES

    mode = section.get("mode", str, "none")
    if mode not in GPU_MODES:
        raise section.error("mode", f"expected one of {list(GPU_MODES)}, found {mode!r}")
    if mode == "mock" and tee != "mock":
        raise section.error("mode", f"'mock' GPUs are only allowed with tee = 'mock', not {tee!r}")
    section.finish()
    return mode


def _inputs(section: _Section, base: Path, platform: str | None) -> tuple[InputSpec, ...]:
    engine_format = section.get("engine_format", str, "auto")
    if engine_format not in FORMATS:
        raise section.error("engine_format", f"expected one of {list(FORMATS)}, found {engine_format!r}")
    specs = [InputSpec("engine", "engine", section.path("engine", base), engine_format, platform)]
    datasets = section.table("datasets")
    for name in sorted(datasets.data):
        if not valid_name(name):
            raise datasets.error(name, "dataset names are 1-64 of [A-Za-z0-9._-]")
        specs.append(InputSpec("dataset", name, datasets.path(name, base)))
    datasets.finish()
    config = section.optional_path("config", base)
    if config is not None:
        specs.append(InputSpec("config", "config", config))
    section.finish()
    return tuple(specs)


def input_key(spec: InputSpec) -> str:
    """How `[staging.inputs]` names an input: "engine", "config" or "dataset:NAME"."""
    return f"dataset:{spec.name}" if spec.role == "dataset" else spec.role


def _staging(section: _Section, inputs: tuple[InputSpec, ...]) -> tuple[tuple[InputSpec, ...], str]:
    """`[staging]`: mode (copy|move) for every input, per-input overrides, and the wipe method."""
    mode = section.get("mode", str, "copy")
    if mode not in STAGING_MODES:
        raise section.error("mode", f"expected one of {list(STAGING_MODES)}, found {mode!r}")
    wipe = section.get("wipe", str, "auto")
    if wipe not in WIPE_METHODS:
        raise section.error("wipe", f"expected one of {list(WIPE_METHODS)}, found {wipe!r}")
    overrides = section.table("inputs")
    known = {input_key(s) for s in inputs}
    for key in sorted(overrides.data):
        if key not in known:
            raise overrides.error(key, f"not an input; expected one of {sorted(known)}")
        value = overrides.get(key, str)
        if value not in STAGING_MODES:
            raise overrides.error(key, f"expected one of {list(STAGING_MODES)}, found {value!r}")
    overrides.finish()
    section.finish()
    specs = tuple(replace(s, staging=overrides.data.get(input_key(s), mode)) for s in inputs)
    return specs, wipe


def _run(section: _Section, base: Path) -> RunSettings:
    runtime = section.get("runtime", str, "process")
    if runtime not in ("process", "oci"):
        raise section.error("runtime", f"expected 'process' or 'oci', found {runtime!r}")
    command = section.get("command", list, ... if runtime == "process" else [])
    if (runtime == "process" and not command) or not all(isinstance(a, str) for a in command):
        raise section.error("command", "expected a non-empty list of strings")
    timeout = section.get("timeout", (int, float), DEFAULT_TIMEOUT)
    if not 0 < timeout <= 7 * 86400:
        raise section.error("timeout", f"expected seconds between 0 and 604800, found {timeout}")
    env = section.get("env", dict, {})
    for key, value in env.items():
        if not isinstance(value, str):
            raise section.error(f"env.{key}", f"expected a string, found {value!r}")
    oci = _oci(section.table("oci")) if runtime == "oci" or "oci" in section.data else None
    isolation = _choice(section, "isolation", ISOLATIONS)
    network = _choice(section, "network", NETWORKS)
    user = section.get("user", str, ENGINE_USER)
    uid, gid = _id(section, "uid"), _id(section, "gid")
    if gid is not None and uid is None:
        raise section.error("gid", "set together with [run] uid")
    expose = _paths(section, "expose", base)
    section.finish()
    return RunSettings(
        tuple(command),
        float(timeout),
        tuple(sorted(env.items())),
        runtime,
        oci,
        isolation=isolation,
        network=network,
        user=user,
        uid=uid,
        gid=gid,
        expose=expose,
    )


def _choice(section: _Section, key: str, allowed: tuple[str, ...]) -> str:
    value = section.get(key, str, allowed[0])
    if value not in allowed:
        raise section.error(key, f"expected one of {list(allowed)}, found {value!r}")
    return value


def _id(section: _Section, key: str) -> int | None:
    """A numeric uid or gid for the engine: never 0 (root)."""
    value = section.get(key, int, None)
    if value is not None and not 0 < value < 2**32 - 1:
        raise section.error(key, f"expected a non-root id between 1 and 4294967294, found {value}")
    return value


def _oci(section: _Section) -> OciSettings:
    """`[run.oci]`: runtime_path (default podman), network (default none), platform."""
    runtime_path = section.get("runtime_path", str, "podman")
    network = section.get("network", str, "none")
    platform = section.get("platform", str, None)
    if platform is not None and not 2 <= len(platform.split("/")) <= 3:
        raise section.error("platform", f"expected OS/ARCH[/VARIANT], found {platform!r}")
    section.finish()
    try:
        return OciSettings(runtime_path, network, platform)
    except RunnerError as exc:
        raise section.error("network", str(exc)) from exc


def _paths(section: _Section, key: str, base: Path) -> tuple[Path, ...]:
    values = section.get(key, list, [])
    if not all(isinstance(v, str) and v for v in values):
        raise section.error(key, "expected a list of paths")
    return tuple((base / v).resolve() if not Path(v).is_absolute() else Path(v) for v in values)


def _signing(policy: _Section, base: Path) -> SigningSettings | None:
    signers_table = policy.table("signers")
    signers = []
    for name in sorted(signers_table.data):
        if not valid_name(name):
            raise signers_table.error(name, "signer names are 1-64 of [A-Za-z0-9._-]")
        signers.append((name, signers_table.path(name, base)))
    signers_table.finish()
    required = policy.get("required", list, [])
    signatures = _paths(policy, "signatures", base)
    if not signers:
        if required or signatures:
            raise policy.error("signers", "missing: required and signatures need [policy.signers]")
        return None
    if not required:
        raise policy.error("required", "name at least one signer whose signature is required")
    for name in required:
        if name not in signers_table.data:
            raise policy.error("required", f"{name!r} is not in [policy.signers]")
    if len(set(required)) != len(required):
        raise policy.error("required", "lists a signer twice")
    return SigningSettings(tuple(signers), tuple(required), signatures)


def _grants(section: _Section, base: Path, inputs: tuple[InputSpec, ...]) -> GrantSettings | None:
    if not section.data:
        return None
    datasets = section.get("datasets", list)
    known = {s.name for s in inputs if s.role == "dataset"}
    if not datasets or len(set(datasets)) != len(datasets):
        raise section.error("datasets", "expected a non-empty list of distinct dataset names")
    for name in datasets:
        if name not in known:
            raise section.error("datasets", f"{name!r} is not in [inputs.datasets]")
    timeout = section.get("timeout", (int, float), 600)
    if not 0 < timeout <= 86400:
        raise section.error("timeout", f"expected seconds between 0 and 86400, found {timeout}")
    poll = section.get("poll", (int, float), 0.2)
    if not 0.01 <= poll <= 60:
        raise section.error("poll", f"expected seconds between 0.01 and 60, found {poll}")
    settings = GrantSettings(
        dir=section.path("dir", base),
        cert_out=section.path("cert_out", base),
        timeout=float(timeout),
        datasets=tuple(datasets),
        poll=float(poll),
    )
    section.finish()
    return settings
