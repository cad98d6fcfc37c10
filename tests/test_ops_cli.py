"""The command line as an operator meets it: --version, help for every option, one option name
and one hex rule across evidence types, hints that name real flags, quiet vendor certificates."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import loader
from attestation import clikit
from attestation.nvidia.cli import build_parser as nvidia_parser
from attestation.sevsnp.cli import build_parser as snp_parser
from attestation.sevsnp.cli import main as snp_main
from attestation.tdx.cli import _parser as tdx_parser
from certs.chain import load_certificates
from loader.cli.commands import build_parser
from tests.ops_helpers import REPO, run_loader
from tests.vectors import vectors_dir

_cli = run_loader


def _options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _options(child, f"{path} {name}")
        else:
            yield path, action


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [
        ("trusted-loader", build_parser()),
        ("evidence tdx", tdx_parser("tdx")),
        ("evidence sev-snp", snp_parser("sev-snp")),
        ("evidence nvidia", nvidia_parser("nvidia")),
    ]


def test_version() -> None:
    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"trusted-loader {loader.__version__}"


def test_every_option_and_argument_has_help_text() -> None:
    missing = [
        f"{path}: {'/'.join(action.option_strings) or action.dest}"
        for name, parser in _all_parsers()
        for path, action in _options(parser, name)
        if not action.help and action.dest != "help"
    ]
    assert missing == []


def test_top_level_help_cites_no_internal_document() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    assert "DESIGN" not in done.stdout and "shared/" not in done.stdout


def test_evidence_verify_help_works_without_type() -> None:
    done = _cli("evidence", "verify", "--help")
    assert done.returncode == 0, done.stderr
    assert "--type tdx --help" in done.stdout and "--report-data HEX" in done.stdout
    bare = _cli("evidence", "verify", "quote.bin")
    assert bare.returncode == 2 and "--type is required" in bare.stderr


def test_one_name_for_the_expected_binding_in_every_evidence_type() -> None:
    for name, parser in _all_parsers()[1:]:
        flags = {flag for _, action in _options(parser, name) for flag in action.option_strings}
        assert "--report-data" in flags, name
    nvidia = nvidia_parser("nvidia")
    new = nvidia.parse_args(["r", "--chain", "c", "--report-data", "ab" * 32])
    old = nvidia.parse_args(["r", "--chain", "c", "--nonce", "ab" * 32])  # the old spelling stays
    assert new.nonce == old.nonce == bytes.fromhex("ab" * 32)


def test_one_hex_rule() -> None:
    convert = clikit.hex_arg(4)
    assert convert("0xDEADbeef") == convert("deadbeef") == bytes.fromhex("deadbeef")
    for bad in ("dead", "deadbeefaa", "dead beef", "zzzzzzzz", "0x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected 4 bytes as 8 hex digits"):
            convert(bad)
    assert clikit.evidence_bytes(b"0a0B\n") == b"\x0a\x0b"
    assert clikit.evidence_bytes(b"\x04\x00\x02") == b"\x04\x00\x02"


def test_sev_snp_report_as_hex_text_verifies_like_the_raw_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v = vectors_dir() / "snp" / "virtee-sev"
    text = tmp_path / "report.hex"
    text.write_text((v / "report_milan.bin").read_bytes().hex() + "\n")
    vcek = str(v / "vcek_milan.der")
    judged = ["--any-image", "--min-tcb", "bl=0,tee=0,snp=0,ucode=0"]  # appraisal is not the subject
    assert snp_main([str(v / "report_milan.bin"), "--vcek", vcek, *judged]) == 0
    assert snp_main([str(text), "--vcek", vcek, *judged]) == 0


def test_hints_name_flags_that_exist() -> None:
    """Every `--flag` a verifier's message suggests is a flag of the command that shows it."""
    sources = [
        REPO / "attestation/mock/verifier.py",
        REPO / "attestation/nvidia/mockgpu.py",
        REPO / "attestation/sevsnp/validate.py",
        REPO / "loader/report/verify.py",
        REPO / "loader/cli/commands.py",
        REPO / "loader/report/show.py",
    ]
    hinted = {f for p in sources for f in re.findall(r"(--[a-z][a-z-]+)", p.read_text())}
    known = {
        flag for _, parser in _all_parsers() for _, a in _options(parser, "") for flag in a.option_strings
    }
    assert hinted - known == set()
    for path in sources:
        text = path.read_text()
        assert "pass allow_mock" not in text and 'unless allow_debug"' not in text, path


def _serial_zero_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "serial zero (synthetic)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2020, 1, 1))
        .not_valid_after(dt.datetime(2030, 1, 1))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    at = der.index(b"\x02\x01\x01")  # the serial INTEGER 1 -> 0 (the signature no longer matters)
    return der[:at] + b"\x02\x01\x00" + der[at + 3 :]


def test_a_serial_zero_vendor_certificate_loads_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (cert,) = load_certificates(_serial_zero_certificate())
    assert cert.subject.rfc4514_string() == "CN=serial zero (synthetic)"


def test_a_serial_zero_report_certificate_is_a_clean_error(demo_report: tuple[Path, bytes]) -> None:
    from loader.errors import ReportError
    from loader.report.document import _certificate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ReportError, match=r"x5chain\[0\]: expected a positive serial number, found 0"):
            _certificate(_serial_zero_certificate(), 0)


def test_the_commands_the_demo_suggests_succeed(tmp_path: Path) -> None:
    import shlex

    done = _cli("demo", "--workdir", tmp_path / "demo")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  try "))
    block = [lines[start][len("  try ") :]]
    for line in lines[start + 1 :]:
        if not line.startswith("            "):
            break
        block.append(line)
    joined = " ".join(line.strip() for line in block).replace(" \\ ", " ")  # continuation lines
    suggested = ["trusted-loader" + part for part in joined.split("trusted-loader")[1:]]
    tried = 0
    for command in suggested:
        argv = shlex.split(command)
        if argv[1] == "run":
            continue  # a second job: covered by the boot tests
        result = _cli(*argv[1:])
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        tried += 1
    assert tried >= 2


def test_a_missing_engine_is_named_once_in_its_reason(demo_dir: Path) -> None:
    from loader.boot.config import load_config
    from loader.boot.sequence import boot

    (demo_dir / "inputs" / "engine").unlink()
    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.verdict == "abort"
    first = outcome.reasons[0]
    assert first.count("engine 'engine'") == 1 and first.count("inputs/engine") == 1, first
