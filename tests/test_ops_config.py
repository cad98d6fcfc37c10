"""docs/configuration.md against loader/boot/config.py; `config check`; secret-file overrides."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from loader.boot import config as config_mod
from loader.boot import secretfiles
from loader.errors import ConfigError
from tests.ops_helpers import REPO, loader_env, make_job

DOCS = REPO / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \| (.+) \|$")
_KINDS = {str: "string", int: "number", float: "number", list: "list", dict: "table"}


def _doc_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = _ROW.match(line)
        if m and not m.group(1).startswith("TL_"):
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def _example() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def _recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, tuple[Any, Any]]:
    """Every key the parser asks for while loading the documented example, with kind and default."""
    seen: dict[str, tuple[Any, Any]] = {}
    original = config_mod._Section.get

    def spy(self, key, kind, default=...):  # type: ignore[no-untyped-def]
        name = self._key(key)
        if not name.startswith(("inputs.datasets.", "policy.signers.", "staging.inputs.")):
            seen.setdefault(name, (kind, default))  # the first ask says whether it is optional
        return original(self, key, kind, default)

    monkeypatch.setattr(config_mod._Section, "get", spy)
    path = tmp_path / "loader.toml"
    path.write_text(_example())
    config_mod.load_config(path)
    return seen


def test_every_parsed_key_is_documented_with_its_type_and_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = _doc_rows()
    recorded = _recorded(monkeypatch, tmp_path)
    assert sorted(recorded) == sorted(docs)
    for key, (kind, default) in recorded.items():
        doc_type, doc_default = docs[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        assert doc_type.startswith(_KINDS[kinds[0]]) or _KINDS[kinds[0]] in doc_type, key
        if default is ...:
            assert doc_default == "required", key
        elif default is None:
            assert doc_default == "unset", key
        else:
            literal = doc_default.strip("`")
            assert tomllib.loads(f"v = {literal}")["v"] == default, key


def test_the_example_sets_every_documented_key() -> None:
    def flatten(table: dict[str, Any], prefix: str = "") -> set[str]:
        keys = set()
        for key, value in table.items():
            name = f"{prefix}{key}"
            keys.add(name)
            if isinstance(value, dict) and name not in (
                "inputs.datasets",
                "run.env",
                "policy.signers",
                "staging.inputs",
            ):
                keys |= flatten(value, name + ".")
        return keys

    assert flatten(tomllib.loads(_example())) == set(_doc_rows())


def test_documented_overrides_are_exactly_the_code_list() -> None:
    documented = dict(re.findall(r"^\| `(TL_[A-Z_]+)` \| `([a-z_.]+)` \|$", DOCS.read_text(), re.MULTILINE))
    assert documented == secretfiles.SECRET_FILE_ENV


def _check(path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", "config", "check", str(path), *extra],
        cwd=REPO,
        env=loader_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_accepts_a_valid_file(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    done = _check(job.config, "--json")
    assert done.returncode == 0, done.stderr
    doc = __import__("json").loads(done.stdout)
    assert doc["tee"] == "mock"
    assert [(i["role"], i["name"]) for i in doc["inputs"]] == [
        ("engine", "engine"),
        ("dataset", "clinic"),
        ("dataset", "lab"),
        ("config", "config"),
    ]


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("timeout = 120", "timeout = 120\ntimout = 5"), "run.timout: unknown key"),
        (('job_id = "demo"', 'job_id = "demo"\nspool = "x"'), "spool: unknown key"),
        (('tee = "mock"', 'tea = "mock"'), "tee: missing (required); found unknown key 'tea' instead"),
        (("timeout = 120", 'timeout = "soon"'), "run.timeout: expected an integer or a number, found 'soon'"),
        (('tee = "mock"', 'tee = "sgx"'), "tee: expected one of"),
        (("timeout = 120", "timeout = 120\n[run.extra]\nx = 1"), "run.extra: unknown key"),
    ],
)
def test_config_check_names_the_wrong_key_in_one_line(
    tmp_path: Path, edit: tuple[str, str], named: str
) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    text = job.config.read_text()
    assert edit[0] in text
    job.config.write_text(text.replace(edit[0], edit[1], 1))
    done = _check(job.config)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {job.config.resolve()}: ")
    assert named in lines[0]


def test_config_check_reports_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    missing = _check(tmp_path / "nope.toml")
    assert missing.returncode == 2 and "cannot read loader config" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("tee = \n")
    done = _check(bad)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "not valid TOML" in done.stderr


def test_unknown_override_variable_is_refused(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    done = _check(job.config, TL_ACOUNT_KEY_FILE="/run/secrets/key")
    assert done.returncode == 2
    assert "TL_ACOUNT_KEY_FILE: not a recognised override" in done.stderr
    ok = _check(job.config, TL_ACCOUNT_KEY_FILE="/run/secrets/key", TL_VECTORS="/elsewhere")
    assert ok.returncode == 0
    assert "publish.evm.account_key_file overridden from the environment: /run/secrets/key" in ok.stderr


def test_override_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="TL_ACCOUNT_KEY_FILE: expected an absolute path"):
        secretfiles.check_environment({"TL_ACCOUNT_KEY_FILE": "key.pem"})
    with pytest.raises(ConfigError, match="expected an absolute path"):
        secretfiles.override("publish.evm.account_key_file", {"TL_ACCOUNT_KEY_FILE": "key.pem"})


def test_every_override_replaces_a_key_the_parser_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both ways: each variable names a parsed key (no documented override for a key that does
    not exist), and setting it changes what the parser returns for that key."""
    recorded = _recorded(monkeypatch, tmp_path)
    for name, key in secretfiles.SECRET_FILE_ENV.items():
        assert key in recorded, f"{name} overrides {key}, which the parser never reads"
    monkeypatch.setenv("TL_ACCOUNT_KEY_FILE", "/run/credentials/operator.key")
    cfg = config_mod.load_config(tmp_path / "loader.toml")
    assert cfg.publish.evm is not None
    assert cfg.publish.evm.account_key_file == Path("/run/credentials/operator.key")


def test_secret_path_prefers_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = config_mod._Section({"account_key_file": "local.key"}, "publish.evm", tmp_path / "loader.toml")
    monkeypatch.delenv("TL_ACCOUNT_KEY_FILE", raising=False)
    assert section.secret_path("account_key_file", tmp_path) == tmp_path / "local.key"
    monkeypatch.setenv("TL_ACCOUNT_KEY_FILE", "/run/credentials/operator.key")
    assert section.secret_path("account_key_file", tmp_path) == Path("/run/credentials/operator.key")
    section.finish()
    with pytest.raises(KeyError, match="not a secret-file key"):
        config_mod._Section({}, "run", tmp_path).secret_path("command", tmp_path)
