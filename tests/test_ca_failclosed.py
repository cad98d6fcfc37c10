"""The CA fails closed (docs/appraisal.md): no certificate unless its policy pins reference values
or says any_image = true; evidence of another image, of a debug TEE, or made after a workload
start in RTMR3 is refused. Real CA over HTTP on loopback, real enrollment client.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import binding, rtmr
from attestation.evidence import Evidence
from attestation.mock import format as mockfmt
from attestation.mock.attester import DEVICE, MockAttester, reference_entry
from attestation.mock.root import private_key
from attestation.reference import reference_document
from certs.ca.authority import CertificateAuthority, init_ca_dir
from certs.ca.service import BackgroundServer
from certs.extensions import decode_evidence_extension
from loader.boot.enroll import EnrollmentRefused, enroll
from tests.ca_helpers import REPO, Cvm

ANY_IMAGE = 'reference = "reference.json"'
OTHER_IMAGE = {**reference_entry("synthetic-other-image"), "values": {**reference_entry()["values"]}}
OTHER_IMAGE["values"]["mrtd"] = ["ab" * 48]  # type: ignore[index]


def _ca(directory: Path, *, edit: tuple[str, str] | None = None) -> CertificateAuthority:
    """`ca init --allow-mock` (reference values of the mock), optionally with one policy edit."""
    init_ca_dir(directory, allow_mock=True)
    if edit is not None:
        path = directory / "policy.toml"
        text = path.read_text()
        assert edit[0] in text
        path.write_text(text.replace(edit[0], edit[1], 1))
    return CertificateAuthority.load(directory)


def _enroll(ca: CertificateAuthority, collect) -> list[bytes]:  # type: ignore[no-untyped-def]
    cvm = Cvm.new()
    with BackgroundServer(ca) as url:
        return enroll(url, cvm.key, lambda nonce: collect(cvm, nonce), sleep=lambda _s: None).chain_der()


def _refusal(ca: CertificateAuthority, collect) -> EnrollmentRefused:  # type: ignore[no-untyped-def]
    with pytest.raises(EnrollmentRefused) as info:
        _enroll(ca, collect)
    assert info.value.code == "policy_refused"
    return info.value


def _genuine(cvm: Cvm, nonce: bytes) -> list[Evidence]:
    return [cvm.evidence(nonce)]


def _serve(ca_dir: Path, timeout: float = 30) -> tuple[int | None, list[str]]:
    """`ca serve` as a subprocess: (exit code, or None once it listens; its stderr lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "loader", "ca", "serve", "--dir", str(ca_dir), "--listen", "127.0.0.1:0"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                return proc.returncode, lines
            lines.append(line)
            if "listening on" in line:
                return None, lines
        raise AssertionError(f"ca serve neither started nor exited: {lines}")
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


def test_a_ca_that_pins_nothing_does_not_start(tmp_path: Path) -> None:
    """Refusing to start is clearest for an operator: the reason is on the terminal at once,
    not in each refused client's log while the CA looks healthy."""
    hw = tmp_path / "hw"
    assert (
        subprocess.run(
            [sys.executable, "-m", "loader", "ca", "init", "--dir", str(hw)], cwd=REPO, capture_output=True
        ).returncode
        == 0
    )
    code, lines = _serve(hw)
    assert code == 2, lines
    assert "attestation: expected reference = FILE" in "".join(lines)
    assert "any_image = true; found neither" in "".join(lines)

    mock = tmp_path / "mock"
    init_ca_dir(mock, allow_mock=True)
    path = mock / "policy.toml"
    path.write_text(path.read_text().replace(ANY_IMAGE, ""))  # an operator drops the reference line
    code, lines = _serve(mock)
    assert code == 2 and "found neither" in "".join(lines)


def test_any_image_is_logged_at_start_and_recorded_in_the_certificate(tmp_path: Path) -> None:
    ca = _ca(tmp_path / "any", edit=(ANY_IMAGE, "any_image = true"))
    code, lines = _serve(tmp_path / "any")
    assert code is None and any("ANY IMAGE ACCEPTED" in line for line in lines), lines

    leaf = _leaf(_enroll(ca, _genuine))
    assert leaf["appraisal"] == {"reference_digest": None, "any_image": True, "allow_debug": False}

    pinned = _ca(tmp_path / "pinned")
    leaf = _leaf(_enroll(pinned, _genuine))
    assert leaf["appraisal"]["any_image"] is False
    assert leaf["appraisal"]["reference_digest"] == pinned.policy.reference.digest  # type: ignore[union-attr]


def _leaf(chain: list[bytes]) -> dict:  # type: ignore[type-arg]
    from cryptography import x509

    bundle = decode_evidence_extension(x509.load_der_x509_certificate(chain[0]))
    assert bundle is not None
    return bundle["claims"]


def test_reference_and_any_image_together_are_refused_at_load(tmp_path: Path) -> None:
    from certs.errors import CertsError

    with pytest.raises(CertsError, match="exclude each other"):
        _ca(tmp_path / "ca", edit=(ANY_IMAGE, ANY_IMAGE + "\nany_image = true"))


def test_evidence_of_another_image_is_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    init_ca_dir(ca_dir, allow_mock=True)
    (ca_dir / "reference.json").write_bytes(reference_document([OTHER_IMAGE]))
    refusal = _refusal(CertificateAuthority.load(ca_dir), _genuine)
    assert "mock: reference: matches no mock platform: 'synthetic-other-image': mrtd" in refusal.reason


def _after_workload_start(tee_root: Path):  # type: ignore[no-untyped-def]
    """The workload asks the TEE for evidence after the loader marked the boundary: the mock
    register (a file under the TEE root, shared with the mock device) holds a workload start."""
    (tee_root / DEVICE).mkdir(parents=True)
    loader = MockAttester(root=tee_root)  # the VM boots: RTMR3 zero
    loader.extend(rtmr.event_value("workload-start"), "workload-start")

    def collect(cvm: Cvm, nonce: bytes) -> list[Evidence]:
        return [loader.collect(binding.report_data(cvm.spki, nonce, ()))]

    return collect


@pytest.mark.parametrize("policy", ["reference", "any_image"])
def test_evidence_made_after_a_workload_start_is_refused(tmp_path: Path, policy: str) -> None:
    edit = None if policy == "reference" else (ANY_IMAGE, "any_image = true")
    ca = _ca(tmp_path / "ca", edit=edit)
    refusal = _refusal(ca, _after_workload_start(tmp_path / "tee"))
    assert any("mock: rtmr3: RTMR3 is " in d and "workload start" in d for d in refusal.details), refusal
    if policy == "reference":  # the reference values pin RTMR3 before the loader, too
        assert "mock: reference: matches no mock platform" in refusal.reason
        assert "rtmr3" in refusal.reason


def _debug_mock(cvm: Cvm, nonce: bytes) -> list[Evidence]:
    """SYNTHETIC debug mock evidence, signed with the mock root: a debug TEE that is the image."""
    registers = {name: bytes(48) for name in mockfmt.REGISTERS}
    registers["mrtd"] = bytes.fromhex(reference_entry()["values"]["mrtd"][0])  # type: ignore[index]
    body = {
        "mock": True,
        "tee": "mock",
        "report_data": binding.report_data(cvm.spki, nonce, ()),
        "registers": registers,
        "debug": True,
        "created": int(dt.datetime.now(dt.UTC).timestamp()),
    }
    payload = cbor2.dumps(body, canonical=True)
    signature = private_key().sign(payload, ec.ECDSA(hashes.SHA384()))
    return [Evidence("mock", mockfmt.encode(payload, signature))]


def test_a_debug_tee_is_refused_unless_the_policy_allows_it(tmp_path: Path) -> None:
    refusal = _refusal(_ca(tmp_path / "strict"), _debug_mock)
    assert "mock: debug: a debug TEE" in refusal.reason
    # allow_debug lifts the appraisal's refusal; the [tee.mock] table's equals = { debug = false }
    # (an extra constraint) still holds until the operator drops it too
    lenient = _ca(tmp_path / "lenient", edit=(ANY_IMAGE, ANY_IMAGE + "\nallow_debug = true"))
    refusal = _refusal(lenient, _debug_mock)
    assert refusal.details == ("mock: debug is True, expected False",)
    path = tmp_path / "lenient" / "policy.toml"
    path.write_text(path.read_text().replace("equals = { debug = false }", ""))
    leaf = _leaf(_enroll(CertificateAuthority.load(tmp_path / "lenient"), _debug_mock))
    assert leaf["appraisal"]["allow_debug"] is True
