"""GPUs held to NVIDIA's RIMs at boot: the collateral step fetches the driver and VBIOS RIMs from
a RIM service on loopback and a mismatch becomes an abort reason that names the index.

The real Hopper report cannot answer this run's nonce (its nonce is fixed), so these tests
drive the boot's collateral step with the real evidence in the state, as `_collect` leaves it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import binding
from attestation.mock.attester import MockAttester
from attestation.nvidia import spdm
from attestation.nvidia.rimservice import rim_ids
from loader.boot import sequence as boot_mod
from loader.boot.config import load_config
from loader.boot.keys import EphemeralKey
from tests.collateral_server import Served, rim_route, serving
from tests.nvidia_helpers import DRIVER_RIM_TEST, VBIOS_RIM, real_evidence
from tests.test_nvidia_rim import _cert, make_rim


@pytest.fixture(scope="module")
def test_ca_rims(vectors: Path) -> tuple[bytes, dict[str, bytes]]:
    """RIMs signed by a TEST CA (not NVIDIA's) listing the real report's own measurements."""
    root_key, signer_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _cert("TEST RIM root", "TEST RIM root", root_key, root_key, True)
    signer = _cert("TEST RIM signer", "TEST RIM root", signer_key, root_key, False)
    pki = (root, signer, signer_key)
    report = spdm.parse(real_evidence(vectors).data)

    def values(indices: range) -> dict[int, list[bytes]]:
        return {i: [report.response.measurement(i + 1).value] for i in indices}

    wrong = values(range(0, 16))
    wrong[5] = [bytes(48)]
    rims = {
        "vbios": make_rim(pki, "96.00.9F.00.01", values(range(0, 16))),
        "vbios-wrong-5": make_rim(pki, "96.00.9F.00.01", wrong),
        "driver": make_rim(pki, "550.90.07", values(range(16, 40))),
    }
    return root.public_bytes(serialization.Encoding.PEM), rims


def _state(demo_dir: Path, vectors: Path, collateral: str) -> boot_mod.BootState:
    cfg_path = demo_dir / "loader.toml"
    cfg_path.write_text(cfg_path.read_text() + f"\n[collateral]\n{collateral}\nattempts = 1\n")
    key = EphemeralKey()
    state = boot_mod.BootState(cfg=load_config(cfg_path), key=key, nonce=secrets.token_bytes(32), run_id="t")
    cpu = MockAttester().collect(binding.report_data(key.spki, state.nonce, [real_evidence(vectors)]))
    state.evidence = [cpu, real_evidence(vectors)]
    return state


def _serve(vectors: Path, vbios: bytes, driver: bytes) -> Served:
    ids = rim_ids(real_evidence(vectors).data)
    return Served({**rim_route(ids["vbios"], vbios), **rim_route(ids["driver"], driver)})


def test_matching_rims_signed_by_a_test_ca_pass(demo_dir, vectors, test_ca_rims) -> None:
    root, rims = test_ca_rims
    (demo_dir / "test-rim-root.pem").write_bytes(root)
    with serving(_serve(vectors, rims["vbios"], rims["driver"])) as url:
        state = _state(demo_dir, vectors, f'rim_url = "{url}"\nrim_root = "test-rim-root.pem"')
        boot_mod._collateral(state)
    assert state.reasons == []
    (only,) = state.collateral["sets"]
    assert only["evidence"] == 1 and set(only["files"]) == {"rim:driver", "rim:vbios"}


def test_a_measurement_mismatch_aborts_naming_the_index(demo_dir, vectors, test_ca_rims) -> None:
    root, rims = test_ca_rims
    (demo_dir / "test-rim-root.pem").write_bytes(root)
    with serving(_serve(vectors, rims["vbios-wrong-5"], rims["driver"])) as url:
        state = _state(demo_dir, vectors, f'rim_url = "{url}"\nrim_root = "test-rim-root.pem"')
        boot_mod._collateral(state)
    boot_mod._decide(state)
    (reason,) = state.reasons
    assert reason.startswith("collateral: evidence[1] nvidia: rim_vbios: VBIOS RIM 96.00.9F.00.01:")
    assert "measurements differ at index 5 (" in reason


def test_the_real_rims_do_not_match_the_real_report(demo_dir, vectors) -> None:
    """The vectors' VBIOS RIM is for 96.00.5E.00.01, the report's VBIOS is 96.00.9F.00.01; with
    NVIDIA's own root (bundled), and their signers expired by now."""
    vbios, driver = (vectors / VBIOS_RIM).read_bytes(), (vectors / DRIVER_RIM_TEST).read_bytes()
    with serving(_serve(vectors, vbios, driver)) as url:
        state = _state(demo_dir, vectors, f'rim_url = "{url}"')
        boot_mod._collateral(state)
    (reason,) = state.reasons
    assert reason.startswith("collateral: evidence[1] nvidia: rim:driver:chain: certificate has expired")
    assert "also failed: rim:vbios:chain, rim_driver, rim_vbios" in reason


def test_an_unreachable_rim_service_aborts(demo_dir, vectors) -> None:
    from tests.collateral_server import unreachable_url

    state = _state(demo_dir, vectors, f'rim_url = "{unreachable_url()}"')
    boot_mod._collateral(state)
    (reason,) = state.reasons
    assert "no collateral" in reason and "unreachable" in reason
    assert state.collateral["needed"] is True and state.collateral["sets"] == []


# --- OCSP for the GPU chain ([collateral] ocsp_url; tests/ocsp_responder.py, a TEST CA) ---------


def test_an_ocsp_answer_not_signed_by_the_chain_aborts_at_boot(demo_dir, vectors, test_ca_rims) -> None:
    from tests.ocsp_responder import OcspServer, Pki, Responder

    root, rims = test_ca_rims
    (demo_dir / "test-rim-root.pem").write_bytes(root)
    responder = Responder(Pki())
    with serving(_serve(vectors, rims["vbios"], rims["driver"])) as url, OcspServer(responder) as ocsp_url:
        settings = f'rim_url = "{url}"\nrim_root = "test-rim-root.pem"\nocsp_url = "{ocsp_url}"'
        state = _state(demo_dir, vectors, settings)
        boot_mod._collateral(state)
    assert responder.requests == 1  # the leaf's answer is refused; the boot asks no further
    (reason,) = state.reasons
    assert "OCSP response is not signed by" in reason and "GSP" in reason


def test_recorded_ocsp_answers_are_judged_again(vectors, test_ca_rims) -> None:
    """A report's collateral carrying OCSP answers for the real chain that the TEST CA signed:
    the GPU judgement fails on them; without them it passes with the advisory."""
    import itertools

    from attestation.nvidia import ocsp
    from attestation.nvidia.device import load_chain
    from loader.report.collateral import judge_one
    from tests.nvidia_helpers import NOW, REPORT_NONCE
    from tests.ocsp_responder import Pki, Responder

    root, rims = test_ca_rims
    ev = real_evidence(vectors)
    files = {"rim:vbios": rims["vbios"], "rim:driver": rims["driver"]}
    roots = {"nvidia-rim": root}
    plain = judge_one(1, ev, files, at=NOW, expected_nonce=REPORT_NONCE, roots=roots)
    assert plain.ok and any(a.startswith(ocsp.NOT_CHECKED) for a in plain.advisories), plain.line()
    responder = Responder(Pki())
    certs = load_chain(ev.aux["chain"])
    for n, (cert, issuer) in enumerate(itertools.pairwise(certs)):
        files[f"ocsp:{n}"] = responder.answer(ocsp.build_request(cert, issuer, bytes(32)))
    judged = judge_one(1, ev, files, at=NOW, expected_nonce=REPORT_NONCE, roots=roots)
    assert not judged.ok and judged.detail.startswith("ocsp:0: ") and "is not signed by" in judged.detail
    assert not any(a.startswith(ocsp.NOT_CHECKED) for a in judged.advisories)
