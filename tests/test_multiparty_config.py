"""The multi-party sections of the loader config: [policy] signers/required/signatures,
[grants], [output]; mistakes are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from loader.boot.config import load_config
from loader.errors import ConfigError

BASE = """tee = "mock"
[policy]
path = "approved.json"
{policy}
[inputs]
engine = "engine"
[inputs.datasets]
lab = "lab.tlenc"
clinic = "clinic.tlenc"
[run]
command = ["{{engine}}"]
{rest}
"""
SIGNED = """signatures = ["a.sig", "b.sig"]
required = ["lab"]
[policy.signers]
lab = "lab.pub.pem"
clinic = "clinic.pub.pem"
"""
GRANTS = """[grants]
dir = "grants"
cert_out = "cvm.pem"
datasets = ["lab"]
timeout = 5
[output]
recipient = "owner.pub.pem"
"""


def _load(tmp_path: Path, policy: str = "", rest: str = ""):  # type: ignore[no-untyped-def]
    path = tmp_path / "loader.toml"
    path.write_text(BASE.format(policy=policy, rest=rest))
    return load_config(path)


def test_sections_parse_with_paths_relative_to_the_config(tmp_path):
    cfg = _load(tmp_path, SIGNED, GRANTS)
    assert cfg.signing is not None and cfg.grants is not None
    assert cfg.signing.signers == (("clinic", tmp_path / "clinic.pub.pem"), ("lab", tmp_path / "lab.pub.pem"))
    assert cfg.signing.required == ("lab",)
    assert cfg.signing.signatures == (tmp_path / "a.sig", tmp_path / "b.sig")
    assert cfg.grants.dir == tmp_path / "grants" and cfg.grants.cert_out == tmp_path / "cvm.pem"
    assert cfg.grants.datasets == ("lab",) and cfg.grants.timeout == 5
    assert cfg.output_recipient == tmp_path / "owner.pub.pem"


def test_without_the_sections_nothing_changes(tmp_path):
    cfg = _load(tmp_path)
    assert cfg.signing is None and cfg.grants is None and cfg.output_recipient is None


@pytest.mark.parametrize(
    ("policy", "rest", "message"),
    [
        (
            SIGNED.replace('required = ["lab"]', 'required = ["nurse"]'),
            "",
            "policy.required: 'nurse' is not in",
        ),
        (SIGNED.replace('required = ["lab"]', "required = []"), "", "policy.required: name at least one"),
        (SIGNED.replace('required = ["lab"]', 'required = ["lab", "lab"]'), "", "lists a signer twice"),
        ('required = ["lab"]', "", "policy.signers: missing"),
        (SIGNED + "nurse = 3\n", "", "policy.signers.nurse: expected a string"),
        ("", GRANTS.replace('datasets = ["lab"]', 'datasets = ["pharmacy"]'), "'pharmacy' is not in"),
        ("", GRANTS.replace("timeout = 5", "timeout = 0"), "grants.timeout"),
        ("", GRANTS.replace("timeout = 5", "timeout = 5\nwait = 1"), "grants.wait: unknown key"),
        ("", GRANTS.replace('cert_out = "cvm.pem"\n', ""), "grants.cert_out: missing"),
        ("", GRANTS + 'sealed = "x"\n', "output.sealed: unknown key"),
    ],
)
def test_mistakes_are_refused_naming_the_key(tmp_path, policy, rest, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _load(tmp_path, policy, rest)
