"""The OCI runner's contract, checked with a stand-in for podman (containers cannot start on the
build machines): the verified image is loaded from the staged layout and run by its ID, with no
network, a read-only root, read-only inputs and one writable output mount."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loader.boot.ocirun import OciSettings, run_argv, run_oci, staged_image_id
from loader.boot.runner import StagedPaths
from loader.boot.stage import InputSpec, stage_input
from loader.errors import RunnerError
from tests import oci_helpers as h

FAKE = r'''#!{python}
"""Stand-in for podman: logs argv; `pull oci:DIR` prints the config digest of DIR's only
manifest (like podman prints the image ID); `run` writes its view into the /output mount."""
import json, os, sys, time
LOG = {log!r}
args = sys.argv[1:]
with open(LOG, "a") as f:
    f.write(json.dumps(args) + "\n")
if args[0] == "pull":
    layout = args[-1][len("oci:"):]
    index = json.load(open(os.path.join(layout, "index.json")))
    digest = index["manifests"][0]["digest"]
    manifest = json.load(open(os.path.join(layout, "blobs", "sha256", digest[7:])))
    print({pull_id!r} or manifest["config"]["digest"][7:])
    sys.exit(0)
if args[0] == "run":
    mounts = [a for i, a in enumerate(args) if i and args[i - 1] == "--mount"]
    out = next(dict(kv.split("=", 1) for kv in m.split(",") if "=" in kv)["src"]
               for m in mounts if "dst=/output" in m)
    with open(os.path.join(out, "seen.json"), "w") as f:
        json.dump(args, f)
    time.sleep({sleep})
    sys.exit({code})
sys.exit(0)
'''


def fake_runtime(tmp_path: Path, *, code: int = 0, sleep: float = 0, pull_id: str = "") -> tuple[Path, Path]:
    log = tmp_path / "runtime.log"
    exe = tmp_path / "fake-podman"
    exe.write_text(FAKE.format(python=sys.executable, log=str(log), code=code, sleep=sleep, pull_id=pull_id))
    exe.chmod(0o755)
    return exe, log


@pytest.fixture()
def staged(tmp_path: Path) -> tuple[Path, StagedPaths, str]:
    built = h.build()
    src = h.write_layout(tmp_path / "src", built)
    staging = tmp_path / "staging"
    engine = stage_input(InputSpec("engine", "engine", src, "oci", "linux/amd64"), staging / "inputs")
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n")
    ds = stage_input(InputSpec("dataset", "lab", data), staging / "inputs")
    cfgfile = tmp_path / "c.json"
    cfgfile.write_text("{}")
    cfg = stage_input(InputSpec("config", "config", cfgfile), staging / "inputs")
    paths = StagedPaths(
        engine=engine.staged,
        config=cfg.staged,
        datasets={"lab": ds.staged},
        datasets_dir=staging / "inputs" / "dataset",
        output=staging / "output",
        logs=staging / "logs",
    )
    return engine.staged, paths, staged_image_id(engine.staged, "linux/amd64")


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_image_is_loaded_from_the_staged_layout_and_run_by_its_verified_id(tmp_path: Path, staged) -> None:
    layout, paths, image_id = staged
    exe, log = fake_runtime(tmp_path)
    result = run_oci(
        OciSettings(runtime_path=str(exe)),
        layout,
        image_id,
        ("--in", "{dataset:lab}", "--out", "{output}", "--cfg", "{config}"),
        paths,
        name="tl-job-1",
        timeout=30,
        extra_env={"MODE": "fast"},
    )
    assert result.succeeded, result
    pull, run = calls(log)
    assert pull == ["pull", "--quiet", f"oci:{layout}"]
    assert run[:9] == [
        "run",
        "--rm",
        "--pull=never",
        "--name=tl-job-1",
        "--network=none",
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--mount",
    ]
    mounts = [run[i + 1] for i, a in enumerate(run) if a == "--mount"]
    assert mounts == [
        f"type=bind,src={paths.datasets_dir},dst=/inputs/dataset,ro",
        f"type=bind,src={paths.config},dst=/inputs/config,ro",
        f"type=bind,src={paths.output},dst=/output",
    ]
    envs = [run[i + 1] for i, a in enumerate(run) if a == "--env"]
    assert envs == [
        "MODE=fast",
        "TL_CONFIG=/inputs/config",
        "TL_DATASETS=/inputs/dataset",
        "TL_DATASET_LAB=/inputs/dataset/lab",
        "TL_OUTPUT=/output",
    ]
    image_at = run.index(image_id[7:])
    assert image_id.startswith("sha256:") and image_at == len(run) - 7
    assert run[image_at + 1 :] == [
        "--in",
        "/inputs/dataset/lab",
        "--out",
        "/output",
        "--cfg",
        "/inputs/config",
    ]
    assert json.loads((paths.output / "seen.json").read_text()) == run
    assert not any(str(tmp_path / "src") in a for a in run)  # only staged paths reach the runtime


def test_configured_network_is_passed_through(staged) -> None:
    _, paths, image_id = staged
    argv = run_argv(OciSettings(network="slirp4netns"), image_id, (), paths, name="n", extra_env={})
    assert "--network=slirp4netns" in argv and "--network=none" not in argv
    assert argv[-1] == image_id[7:]  # no command: the image's own entrypoint


@pytest.mark.parametrize("network", ["", "host;rm -rf /", "--privileged", "a b"])
def test_bad_network_names_are_refused(network: str) -> None:
    with pytest.raises(RunnerError, match=r"run\.oci\.network"):
        OciSettings(network=network)


def test_engine_placeholder_is_refused(staged) -> None:
    _, paths, image_id = staged
    with pytest.raises(RunnerError, match="engine"):
        run_argv(OciSettings(), image_id, ("{engine}",), paths, name="n", extra_env={})


def test_runtime_loading_a_different_image_prevents_the_run(tmp_path: Path, staged) -> None:
    layout, paths, image_id = staged
    exe, log = fake_runtime(tmp_path, pull_id="ab" * 32)
    result = run_oci(
        OciSettings(runtime_path=str(exe)), layout, image_id, (), paths, name="n", timeout=30, extra_env={}
    )
    assert result.exit_code is None and not result.succeeded
    assert "the verified image is " + image_id in (result.error or "")
    assert [c[0] for c in calls(log)] == ["pull"]


def test_exit_code_is_propagated(tmp_path: Path, staged) -> None:
    layout, paths, image_id = staged
    exe, _ = fake_runtime(tmp_path, code=7)
    result = run_oci(
        OciSettings(runtime_path=str(exe)), layout, image_id, (), paths, name="n", timeout=30, extra_env={}
    )
    assert (result.exit_code, result.timed_out, result.error) == (7, False, None)


def test_timeout_removes_the_container(tmp_path: Path, staged) -> None:
    layout, paths, image_id = staged
    exe, log = fake_runtime(tmp_path, sleep=30)
    result = run_oci(
        OciSettings(runtime_path=str(exe)),
        layout,
        image_id,
        (),
        paths,
        name="tl-slow",
        timeout=1,
        extra_env={},
    )
    assert result.timed_out and not result.succeeded
    assert ["rm", "--force", "--time", "0", "tl-slow"] in calls(log)


def test_missing_runtime_is_a_clear_error(tmp_path: Path, staged) -> None:
    layout, paths, image_id = staged
    result = run_oci(
        OciSettings(runtime_path=str(tmp_path / "no-podman")),
        layout,
        image_id,
        (),
        paths,
        name="n",
        timeout=5,
        extra_env={},
    )
    assert result.exit_code is None and "cannot load the image" in (result.error or "")


def test_paths_podman_cannot_carry_are_refused(tmp_path: Path, staged) -> None:
    _, paths, image_id = staged
    bad = StagedPaths(paths.engine, None, {}, paths.datasets_dir, tmp_path / "out,put", paths.logs)
    with pytest.raises(RunnerError, match="--mount"):
        run_argv(OciSettings(), image_id, (), bad, name="n", extra_env={})
