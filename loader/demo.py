"""The demo: the whole boot flow on the mock TEE with sample inputs from two data owners.

It writes, under the work directory: inputs/engine (the statistics engine), inputs/config.json,
inputs/datasets/<name>/ (one CSV dataset per party), approved.json, loader.toml, then runs the
boot flow, verifies its own report (allowing the mock TEE, which it names) and prints a summary.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from loader.digest import digest_path
from loader.errors import InputError

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
        for name in ("inputs", "staging"):
            shutil.rmtree(workdir / name, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
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
    engine.write_bytes(resources.files("loader.demo_assets").joinpath("engine.py").read_bytes())
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


def write_policy(workdir: Path, paths: dict[str, Path]) -> Path:
    policy = {
        "version": 1,
        "order": "demo-order-1",
        "engine": {"name": "stats-engine", "digest": digest_path(paths["engine"]).digest},
        "datasets": [{"name": n, "digest": digest_path(paths[f"dataset:{n}"]).digest} for n in DATASETS],
        "config": {"name": "stats-config", "digest": digest_path(paths["config"]).digest},
        "tee": ["mock"],
        "flags": {"allow_debug": False},
    }
    path = workdir / "approved.json"
    path.write_text(json.dumps(policy, indent=2) + "\n")
    return path


def write_config(workdir: Path, ca_url: str | None) -> Path:
    datasets = "\n".join(f'{n} = "inputs/datasets/{n}"' for n in DATASETS)
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

[inputs]
engine = "inputs/engine"
config = "inputs/config.json"

[inputs.datasets]
{datasets}

[run]
command = [{json.dumps(sys.executable)}, "{{engine}}"]
timeout = 120
{ca}"""
    path = workdir / "loader.toml"
    path.write_text(text)
    return path


def build(workdir: Path, ca_url: str | None = None) -> Path:
    """Write the demo's inputs, approved list and config; return the config path."""
    prepare_workdir(workdir)
    paths = write_inputs(workdir)
    write_policy(workdir, paths)
    return write_config(workdir, ca_url)


def _ca_issued(check: Any) -> bool:
    return check.report is not None and len(check.report.chain) > 1


def summary(workdir: Path, outcome: Any, check: Any, ca_url: str | None = None) -> str:
    """A short human account of the demo run."""
    lines = [f"trusted-loader demo in {workdir}", f"  verdict   {outcome.verdict}"]
    lines += [f"  reason    {r}" for r in outcome.reasons]
    if outcome.workload is not None:
        lines.append(f"  workload  exit {outcome.workload.exit_code}; output in {outcome.output_dir}")
        results = outcome.output_dir / "output" / "results.json"
        if results.is_file():
            pooled = json.loads(results.read_text())["pooled"]
            lines += [
                f"  result    pooled {col}: n={s['count']} mean={s['mean']} sd={s['stdev']}"
                for col, s in pooled.items()
            ]
    digest = check.report.digest if check.report else "?"
    verdict = "OK (mock TEE explicitly allowed)" if check.ok else "FAILED: " + check.reason()
    report = workdir / "report.cbor"
    lab = workdir / "inputs" / "datasets" / "lab"
    lines += [
        f"  report    {report} ({digest})",
        f"  verify    {verdict}",
        f"  try       trusted-loader report show {report}",
        f"            trusted-loader replay {report} --allow-mock --input dataset:lab={lab}",
        f"            trusted-loader run --config {workdir / 'loader.toml'}",
    ]
    if ca_url:
        lines.insert(
            -3,
            f"  ca        enrolled at {ca_url}"
            if _ca_issued(check)
            else f"  ca        no certificate from {ca_url}; the abort report is self-issued",
        )
        lines.append(f"            trusted-loader report verify {report} --ca <CA dir>/ca.pem --allow-mock")
    return "\n".join(lines) + "\n"
