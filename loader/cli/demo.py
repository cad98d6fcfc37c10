"""The demo: the boot flow on the mock TEE, plain or as the three-party scenario.

Plain (`trusted-loader demo`): inputs/engine, inputs/config.json, inputs/datasets/<name>/ (one
CSV dataset per data owner), an unsigned approved.json and loader.toml; output in clear.

Three-party (`trusted-loader demo --parties`): two data owners (lab, clinic) let an engine
author's statistics engine run on their data for an order owner; none sees the others' assets.
Under the work directory it writes:
  parties/<party>/        each party's key pair (and a data owner's plaintext data and data key)
  inputs/engine, inputs/config.json        the engine author's engine and its config
  inputs/datasets/<name>.tlenc             the owners' encrypted datasets
  approved.json, approved.json.<party>.sig the approved list (plaintext digests) and the
                                           detached signatures of lab, clinic and engine-author
  loader.toml                              signers, required signers, grants, sealed output
Then it boots the loader, which publishes its attested certificate (cvm-cert.pem) and waits for
grants; the owners' agents (`owners_grant`) verify that certificate's mock evidence and wrap
their data keys to it; the loader decrypts inside staging, runs the engine, seals the output to
the order owner, and the demo opens it with the order owner's key (opened/).
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from loader.errors import InputError, LoaderError
from loader.measure.digest import digest_path

MARKER = ".trusted-loader-demo"
DATASETS = {
    "lab": ("measurements.csv", ["patient", "age", "hba1c", "ldl"]),
    "clinic": ("visits.csv", ["patient", "age", "systolic_bp", "ldl"]),
}


def prepare_workdir(workdir: Path) -> None:
    """Create `workdir`, or reuse one that holds a previous demo; never clobber anything else."""
    if workdir.exists():
        if not workdir.is_dir():
            raise InputError(f"{workdir}: --workdir exists and is not a directory")
        if any(workdir.iterdir()) and not (workdir / MARKER).exists():
            raise InputError(
                f"{workdir}: --workdir is not empty and holds no previous demo; pick an empty one"
            )
        for name in ("inputs", "staging", "parties", "grants", "opened", "tee"):
            shutil.rmtree(workdir / name, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tee" / "dev" / "mock-tee").mkdir(parents=True)  # the mock TEE's RTMR3 lives here
    (workdir / MARKER).write_text("created by `trusted-loader demo`\n")


def _write_dataset(directory: Path, filename: str, columns: list[str], seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - sample data, not a secret
    directory.mkdir(parents=True)
    lines = [",".join(columns)]
    for i in range(200):
        row = {
            "patient": f"{directory.name[:1].upper()}{i:04d}",
            "age": str(rng.randint(25, 85)),
            "hba1c": f"{rng.gauss(6.1, 0.9):.1f}",
            "ldl": f"{rng.gauss(3.1, 0.8):.2f}",
            "systolic_bp": str(int(rng.gauss(132, 16))),
        }
        lines.append(",".join(row[c] for c in columns))
    (directory / filename).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_inputs(workdir: Path) -> dict[str, Path]:
    inputs = workdir / "inputs"
    engine = inputs / "engine"
    inputs.mkdir()
    engine.write_bytes(resources.files("loader.cli.demo_assets").joinpath("engine.py").read_bytes())
    engine.chmod(0o755)
    config = inputs / "config.json"
    config.write_text(
        json.dumps(
            {"datasets": list(DATASETS), "columns": ["age", "hba1c", "systolic_bp", "ldl"], "digits": 2},
            indent=2,
        )
        + "\n"
    )
    paths = {"engine": engine, "config": config}
    for seed, (name, (filename, columns)) in enumerate(DATASETS.items(), start=1):
        _write_dataset(inputs / "datasets" / name, filename, columns, seed)
        paths[f"dataset:{name}"] = inputs / "datasets" / name
    return paths


SIGNERS = ("lab", "clinic", "engine-author")
ORDER = "demo-order-1"


def write_parties(workdir: Path, paths: dict[str, Path]) -> dict[str, Path]:
    """Keys for every party; each owner's dataset moved to its own folder and encrypted."""
    from loader.parties.grants import encrypt_dataset, write_key_file
    from loader.report import partykeys

    for party, kind in (
        ("lab", "p384"),
        ("clinic", "ed25519"),
        ("engine-author", "p384"),
        ("order-owner", "x25519"),
    ):
        folder = workdir / "parties" / party
        folder.mkdir(parents=True, mode=0o700)
        key = partykeys.generate(kind)
        partykeys.write_private(key, folder / "key.pem")
        partykeys.write_public(key.public_key(), folder / "key.pub.pem")
    for name in DATASETS:
        plain = workdir / "parties" / name / "data"
        shutil.move(str(paths[f"dataset:{name}"]), plain)
        encrypted = workdir / "inputs" / "datasets" / f"{name}.tlenc"
        key, _ = encrypt_dataset(plain, name, encrypted)
        write_key_file(key, workdir / "parties" / name / "dataset.key")
        paths[f"dataset:{name}"] = plain
        paths[f"encrypted:{name}"] = encrypted
    return paths


def sign_policy(workdir: Path, policy: Path) -> None:
    import datetime as dt

    from loader.report.partykeys import load_private
    from loader.report.signing import sign_policy as sign

    now = dt.datetime.now(dt.UTC)
    for party in SIGNERS:
        key = load_private(workdir / "parties" / party / "key.pem")
        envelope = sign(policy.read_bytes(), key, issued=now, expires=now + dt.timedelta(days=30))
        (workdir / f"approved.json.{party}.sig").write_bytes(envelope)


def demo_run(**changes: Any) -> dict[str, Any]:
    """The `run` section of the demo's approved list: what write_config configures."""
    run = {
        "runtime": "process",
        "command": [sys.executable, "{engine}"],
        "env": {},
        "network": "none",
        "timeout": 120,
        "isolation": "none" if uncontained_reason() else "namespaces",
    }
    return {**run, **changes}


@functools.cache
def uncontained_reason() -> str | None:
    """Why the demo must run its engine uncontained here (a non-root user on a kernel without
    user namespaces), or None. The approved list then says so too: the parties consent to it."""
    import os

    return user_namespaces_unavailable() if os.getuid() != 0 else None


def _entry(name: str, path: Path) -> dict[str, str]:
    measured = digest_path(path)
    return {"name": name, "kind": measured.kind, "digest": measured.digest}


def write_policy(
    workdir: Path, paths: dict[str, Path], *, parties: bool = False, run: dict[str, Any] | None = None
) -> Path:
    """The approved list (version 2): inputs with kinds, how the engine runs (`run`, default
    demo_run()) and the output recipient (the order owner's key with `parties`, else none)."""
    from loader.report.partykeys import key_id_text, load_public

    recipient = None
    if parties:
        recipient = key_id_text(load_public(workdir / "parties" / "order-owner" / "key.pub.pem"))
    policy = {
        "version": 2,
        "order": ORDER,
        "engine": _entry("stats-engine", paths["engine"]),
        "datasets": [_entry(n, paths[f"dataset:{n}"]) for n in DATASETS],
        "config": _entry("stats-config", paths["config"]),
        "run": run or demo_run(),
        "output": {"recipient": recipient},
        "tee": ["mock"],
        "flags": {"allow_debug": False},
    }
    path = workdir / "approved.json"
    path.write_text(json.dumps(policy, indent=2) + "\n")
    return path


_PARTY_SECTIONS = """signatures = [{signatures}]
required = [{required}]

[policy.signers]
{signers}

[grants]
dir = "grants"
cert_out = "cvm-cert.pem"
datasets = [{names}]
timeout = 60

[output]
recipient = "parties/order-owner/key.pub.pem"
"""


def write_config(workdir: Path, ca_url: str | None, *, parties: bool = False) -> Path:
    suffix = ".tlenc" if parties else ""
    datasets = "\n".join(f'{n} = "inputs/datasets/{n}{suffix}"' for n in DATASETS)
    sections = (
        _PARTY_SECTIONS.format(
            signatures=", ".join(f'"approved.json.{p}.sig"' for p in SIGNERS),
            required=", ".join(f'"{p}"' for p in SIGNERS),
            signers="\n".join(f'{p} = "parties/{p}/key.pub.pem"' for p in SIGNERS),
            names=", ".join(f'"{n}"' for n in DATASETS),
        )
        if parties
        else ""
    )
    ca = f'\n[ca]\nurl = "{ca_url}"\n' if ca_url else ""
    text = f"""# trusted-loader configuration written by `trusted-loader demo`.
# Relative paths are relative to this file. The mock TEE is for demos only:
# its reports verify only with `report verify --allow-mock`.
tee = "mock"
job_id = "demo"
staging_dir = "staging"
spool_dir = "spool"
output_dir = "output"

[policy]
path = "approved.json"
{sections}
[inputs]
engine = "inputs/engine"
config = "inputs/config.json"

[inputs.datasets]
{datasets}

[attestation]
# The mock TEE device (its RTMR3) is tee/dev/mock-tee: hidden from the engine by its sandbox.
root = "tee"

[run]
command = [{json.dumps(sys.executable)}, "{{engine}}"]
timeout = 120
{containment_keys()}{ca}"""
    path = workdir / "loader.toml"
    path.write_text(text)
    return path


def user_namespaces_unavailable() -> str | None:
    """Why an unprivileged loader cannot contain the engine here (a user namespace), or None."""
    import subprocess

    from loader.boot.sandbox import UNSHARE

    try:
        done = subprocess.run(
            [UNSHARE, "--user", "--map-root-user", "--pid", "--fork", "--mount", "--net", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        return f"{UNSHARE} cannot run: {exc.strerror}"
    if done.returncode != 0:
        return f"this kernel refuses unprivileged user namespaces ({done.stderr.strip()[-200:]})"
    return None


def containment_keys() -> str:
    """[run] containment keys the demo needs here (docs/containment.md)."""
    import os
    import pwd

    from loader.boot.config import ENGINE_USER
    from loader.boot.sandbox import SYSTEM_DIRS

    lines = []
    prefix = os.path.realpath(sys.base_prefix)
    if not any(prefix == d or prefix.startswith(d + "/") for d in SYSTEM_DIRS):
        lines.append(
            f"# The engine's interpreter is outside the system directories.\nexpose = [{json.dumps(prefix)}]"
        )
    if (why := uncontained_reason()) is not None:
        print(f"trusted-loader demo: the engine will run UNCONTAINED: {why}", file=sys.stderr)
        lines.append(f'# Falls back to no containment: {why}\nisolation = "none"')
    if os.getuid() == 0:
        try:
            pwd.getpwnam(ENGINE_USER)
        except KeyError:
            lines.append(
                f"# No {ENGINE_USER!r} account here: the demo runs the engine as nobody (65534).\n"
                "uid = 65534\ngid = 65534"
            )
    return "".join(line + "\n" for line in lines)


REFERENCE = "reference.json"


def write_reference(workdir: Path) -> Path:
    """The reference values of the demo's mock platform, beside its report."""
    from attestation.mock.attester import reference_entry
    from attestation.nvidia.mockgpu import reference_entry as gpu_entry
    from attestation.reference import reference_document

    path = workdir / REFERENCE
    path.write_bytes(reference_document([reference_entry("demo-mock"), gpu_entry("demo-mock-gpu")]))
    return path


def appraisal(workdir: Path) -> Any:
    """The appraisal the demo's suggested commands use: its mock platform's reference values."""
    from attestation.reference import Appraisal, load_reference

    return Appraisal(load_reference(workdir / REFERENCE))


def build(workdir: Path, ca_url: str | None = None, *, parties: bool = False) -> Path:
    """Write the demo's inputs, approved list and config; return the config path.

    parties=False: the two owners' plaintext datasets, an unsigned list, output in clear.
    parties=True: the three-party scenario (module docstring).
    """
    prepare_workdir(workdir)
    write_reference(workdir)
    paths = write_inputs(workdir)
    if not parties:
        write_policy(workdir, paths)
        return write_config(workdir, ca_url)
    paths = write_parties(workdir, paths)
    sign_policy(workdir, write_policy(workdir, paths, parties=True))
    return write_config(workdir, ca_url, parties=True)


def owners_grant(workdir: Path, *, timeout: float = 60.0, policy: str | None = None) -> list[Path]:
    """The data owners' side: wait for the CVM's certificate, verify and appraise it against the
    demo's reference values, write one grant each for the approved list's digest.

    `policy` overrides the approved-list digest the owners consent to (tests: a mismatch).
    """
    import datetime as dt
    import time

    from loader.parties.cvmcert import load_chain, verify_cvm_certificate
    from loader.parties.grants import create_grant, load_key_file
    from loader.publish.spool import atomic_write
    from loader.report.policy import load_policy

    cert = workdir / "cvm-cert.pem"
    deadline = time.monotonic() + timeout
    while not cert.exists():
        if time.monotonic() > deadline:
            raise InputError(f"{cert}: the loader did not publish its certificate within {timeout:g} s")
        time.sleep(0.05)
    approved = load_policy(workdir / "approved.json")
    identity = verify_cvm_certificate(
        load_chain(cert.read_bytes(), str(cert)),
        what=str(cert),
        at=dt.datetime.now(dt.UTC),
        allow_mock=True,
        allowed_tee=approved.tee,
        appraisal=appraisal(workdir),
    )
    written = []
    for name in DATASETS:
        key = load_key_file(workdir / "parties" / name / "dataset.key")
        grant = create_grant(key, identity.public_key, policy=policy or approved.digest)
        path = workdir / "grants" / f"{name}.grant"
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, grant)
        written.append(path)
    return written


def run(config_path: Path, workdir: Path, ca_url: str | None = None, *, parties: bool = False) -> Any:
    """Boot the loader; in the three-party scenario the owners' agents answer with grants
    meanwhile, and the order owner opens the sealed output afterwards."""
    import threading

    from loader.boot.config import load_config
    from loader.boot.sequence import boot

    if not parties:
        return boot(load_config(config_path, ca_url=ca_url), report_out=workdir / "report.cbor")
    errors: list[str] = []

    def agents() -> None:
        try:
            owners_grant(workdir)
        except LoaderError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=agents, name="data-owners", daemon=True)
    thread.start()
    outcome = boot(load_config(config_path, ca_url=ca_url), report_out=workdir / "report.cbor")
    thread.join(timeout=5)
    for error in errors:
        print(f"data owners: {error}", file=sys.stderr)
    if outcome.verdict == "run" and outcome.output_dir is not None:
        from loader.parties.seal import open_sealed
        from loader.report.partykeys import load_private

        sealed = outcome.output_dir / "output.sealed"
        if sealed.exists():
            key = load_private(workdir / "parties" / "order-owner" / "key.pem")
            open_sealed(sealed, key, workdir / "opened")
    return outcome


def _ca_issued(check: Any) -> bool:
    return check.report is not None and len(check.report.chain) > 1


def summary(workdir: Path, outcome: Any, check: Any, ca_url: str | None = None) -> str:
    """A short human account of the demo run."""
    lines = [f"trusted-loader demo in {workdir}", f"  verdict   {outcome.verdict}"]
    lines += [f"  reason    {r}" for r in outcome.reasons]
    sealed = outcome.output_dir / "output.sealed" if outcome.output_dir else None
    parties = (workdir / "parties").is_dir()
    if outcome.workload is not None:
        where = (
            f"output sealed to the order owner: {sealed}" if parties else f"output in {outcome.output_dir}"
        )
        lines.append(f"  workload  exit {outcome.workload.exit_code}; {where}")
        results = workdir / "opened" / "output" / "results.json"
        if not parties:
            results = outcome.output_dir / "output" / "results.json"
        if results.is_file():
            pooled = json.loads(results.read_text())["pooled"]
            lines += [
                f"  result    pooled {col}: n={s['count']} mean={s['mean']} sd={s['stdev']}"
                for col, s in pooled.items()
            ]
    digest = check.report.digest if check.report else "?"
    verdict = (
        "OK (mock TEE explicitly allowed, platform pinned): trust state MOCK"
        if check.ok
        else "FAILED: " + check.reason()
    )
    report = workdir / "report.cbor"
    lab = workdir / ("parties/lab/data" if parties else "inputs/datasets/lab")
    ref = workdir / REFERENCE
    lines += [f"  report    {report} ({digest})", f"  verify    {verdict}"]
    if ca_url:
        issued = _ca_issued(check)
        lines.append(
            f"  ca        enrolled at {ca_url}"
            if issued
            else f"  ca        no certificate from {ca_url}; the abort report is self-issued"
        )
    lines += [
        f"  try       trusted-loader report show {report} --allow-mock --reference {ref}",
        f"            trusted-loader report verify {report} --allow-mock --reference {ref}",
        f"            trusted-loader replay {report} --allow-mock --reference {ref} --partial \\",
        f"                --input dataset:lab={lab}",
    ]
    if parties:
        owner_key = workdir / "parties" / "order-owner" / "key.pem"
        lines += [
            f"            trusted-loader output open {sealed or 'OUTPUT.sealed'} --report {report} \\",
            f"                --allow-mock --reference {ref} --key {owner_key} --out DIR",
            f"            trusted-loader policy verify --config {workdir / 'loader.toml'}",
        ]
    else:
        lines += [
            f"            trusted-loader run --config {workdir / 'loader.toml'}",
            "  parties   two data owners, an engine author and an order owner (signed list, encrypted",
            "            datasets, grants, sealed output): trusted-loader demo --parties --workdir DIR",
        ]
    if ca_url:
        lines.append(
            f"            trusted-loader report verify {report} --ca <CA dir>/ca.pem --allow-mock \\\n"
            f"                --reference {ref}"
        )
    return "\n".join(lines) + "\n"
