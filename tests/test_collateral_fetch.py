"""Collateral clients against a real HTTP server on loopback that serves the vectors' real
collateral files as Intel PCS/PCCS, AMD KDS and the NVIDIA RIM service do."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import CollateralError
from attestation.fetch import Fetcher, FetchError
from attestation.nvidia.rimservice import RimServiceClient, rim_ids
from attestation.sevsnp import cli as snp_cli
from attestation.sevsnp import report as snp_report
from attestation.tdx import cli as tdx_cli
from attestation.tdx import collateral as coll
from attestation.tdx import pcs
from loader.report.collateral import check_record
from tests.collateral_server import (
    Route,
    Served,
    go_pcs,
    kds_chain_route,
    kds_vcek_route,
    rim_route,
    serving,
    trustee_pcs,
    unreachable_url,
)
from tests.snp_helpers import snp
from tests.tdx_helpers import quote_bytes, tdx

FAST = Fetcher(timeout=2.0, attempts=2, backoff=0.01)


def _quote(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(quote_bytes(name))
    return str(path)


def _tdx(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = tdx_cli.main([*args, "--json", "--any-image", "--allow-debug"])  # appraisal: not the subject
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


# ---- Intel PCS / PCCS ------------------------------------------------------------------------


def test_pccs_gives_the_status_the_source_projects_state(tmp_path, capsys):
    """trustee's quote 4 is UpToDate under go-tdx-guest's 2023 collateral at 2023-07-01; the
    go-tdx-guest v4 quote is NotSupported under Intel's rules (README: a known disagreement)."""
    served = Served(go_pcs())
    with serving(served) as url:
        code, out, _ = _tdx([_quote(tmp_path, "trustee_4"), "--pccs-url", url, "--at", "2023-07-01"], capsys)
        assert code == 0 and out["tcb_status"] == "UpToDate", out
        checks = {c["name"]: c for c in out["checks"]}
        assert checks["pck_revocation"]["detail"] == "not revoked (PCK CA and Root CA CRLs)"
        code, out, _ = _tdx([_quote(tmp_path, "go_v4"), "--pccs-url", url, "--at", "2023-07-01"], capsys)
        assert code == 1 and out["tcb_status"] == "NotSupported"
    assert "/tdx/certification/v4/tcb?fmspc=50806f000000" in served.requests
    assert "/sgx/certification/v4/pckcrl?ca=platform&encoding=der" in served.requests


def test_pccs_stale_crls_are_refused(tmp_path, capsys):
    """trustee's 2025 TCB Info for quote 6, but the only CRLs there are are 2023's: a PCCS that
    serves them is refused (the PCK chain and the TCB Signing chain name the expired CRL), and
    no TCB status is given from collateral whose revocation could not be checked."""
    with serving(Served(trustee_pcs())) as url:
        code, out, _ = _tdx([_quote(tmp_path, "trustee_6"), "--pccs-url", url, "--at", "2025-11-01"], capsys)
    assert code == 1 and out["tcb_status"] is None
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["pck_chain"]["detail"].startswith("CRL has expired")
    assert not checks["tcb_info"]["passed"] and not checks["tcb_status"]["passed"]


def test_stale_collateral_is_refused(tmp_path, capsys):
    """The same server at the manifest's reference date: its 2023 documents are stale (the PCK
    CRL, nextUpdate 2023-07-08, is the first to say so)."""
    with serving(Served(go_pcs())) as url:
        code, out, _ = _tdx([_quote(tmp_path, "trustee_4"), "--pccs-url", url, "--at", "2026-11-21"], capsys)
    assert code == 1 and out["tcb_status"] is None
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["pck_chain"]["detail"].startswith("CRL has expired")


def test_unreachable_server_is_refused_with_one_line(tmp_path, capsys):
    code, out, err = _tdx([_quote(tmp_path, "trustee_4"), "--pccs-url", unreachable_url()], capsys)
    assert code == 1 and out["ok"] is False
    assert [c["name"] for c in out["checks"]] == ["collateral"]
    assert "unreachable" in out["checks"][0]["detail"]
    assert len([line for line in err.splitlines() if "rejected" in line]) == 1


def test_another_fmspcs_tcb_info_is_refused(tmp_path, capsys):
    """A server answering for FMSPC 00a06d080000 with the TCB Info of 50806f000000."""
    with serving(Served(go_pcs(fmspc="00a06d080000"))) as url:
        code, out, err = _tdx([_quote(tmp_path, "trustee_6"), "--pccs-url", url], capsys)
    assert code == 1
    assert "for FMSPC 50806f000000, the quote's PCK has 00a06d080000" in out["checks"][0]["detail"]
    assert "rejected: tdx: collateral:" in err


def test_old_header_name_outage_and_cache(tmp_path):
    """SGX-TCB-Info-Issuer-Chain is read too; a 503 is retried; a later outage is served from the
    cache, and an offline directory (that cache) works the same way with no server at all."""
    target = pcs.target_of(quote_bytes("trustee_4"))
    cache = tmp_path / "cache"
    served = Served(go_pcs(old_header=True), failures=1)
    fetcher = Fetcher(timeout=2.0, attempts=2, backoff=0.01, cache_dir=cache)
    with serving(served) as url:
        first = pcs.PcsClient(url, fetcher).collateral(target)
    assert first[coll.TCB_INFO] == tdx("go-tdx-guest", "sample_tcbInfo_response")
    assert first[coll.TCB_INFO_CHAIN] == tdx("go-tdx-guest", "tcbinfo_issuer_chain.pem")
    assert first[coll.ROOT_CA_CRL] == tdx("go-tdx-guest", "rootcrl.der")  # served as hex
    assert len(served.requests) == 5  # one 503, then four documents
    assert (cache / "tdx" / "tcb-info" / "50806f000000.body").exists()
    again = pcs.PcsClient(unreachable_url(), fetcher).collateral(target)
    assert again == first
    offline = pcs.PcsClient("https://pccs.invalid", Fetcher(offline_dir=cache)).collateral(target)
    assert offline == first
    with pytest.raises(FetchError, match="no offline copy of tdx/tcb-info/00a06d080000"):
        pcs.PcsClient("https://pccs.invalid", Fetcher(offline_dir=cache)).collateral(
            pcs.QuoteTarget(bytes.fromhex("00a06d080000"), "platform")
        )


def test_oversized_bodies_and_missing_headers_are_refused():
    target = pcs.target_of(quote_bytes("trustee_4"))
    routes = go_pcs()
    big = {
        **routes,
        "/tdx/certification/v4/qe/identity": Route(b"{" + b" " * (coll.MAX_COLLATERAL_BYTES + 1)),
    }
    with serving(Served(big)) as url, pytest.raises(FetchError, match="more than the 262144 bytes"):
        pcs.PcsClient(url, FAST).collateral(target)
    bare = {
        **routes,
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Route(tdx("go-tdx-guest", "pckcrl")),
    }
    with serving(Served(bare)) as url, pytest.raises(FetchError, match="no SGX-PCK-CRL-Issuer-Chain header"):
        pcs.PcsClient(url, FAST).collateral(target)
    gone = {k: v for k, v in routes.items() if "identity" not in k}
    with serving(Served(gone)) as url, pytest.raises(FetchError, match="HTTP 404"):
        pcs.PcsClient(url, FAST).collateral(target)


def test_redirects_are_not_followed():
    target = pcs.target_of(quote_bytes("trustee_4"))
    routes = {
        "/tdx/certification/v4/tcb?fmspc=50806f000000": Route(b"", {"Location": "http://127.0.0.1:1/x"}, 302)
    }
    with serving(Served(routes)) as url, pytest.raises(FetchError, match="HTTP 302"):
        pcs.PcsClient(url, FAST).collateral(target)


# ---- AMD KDS ---------------------------------------------------------------------------------


def _kds_routes() -> dict[str, Route]:
    raw = snp("virtee-sev/report_milan.bin")
    rep = snp_report.parse(raw)
    spls = {"blSPL": 3, "teeSPL": 0, "snpSPL": 8, "ucodeSPL": 115}
    return {
        **kds_vcek_route("Milan", rep.chip_id, spls, snp("virtee-sev/vcek_milan.der")),
        **kds_chain_route("Milan"),
    }


def test_kds_fetches_the_vcek_and_the_report_verifies_without_vcek(tmp_path, capsys):
    report = tmp_path / "report.bin"
    report.write_bytes(snp("virtee-sev/report_milan.bin"))
    served = Served(_kds_routes())
    judged = ["--any-image", "--min-tcb", "bl=0,tee=0,snp=0,ucode=0"]  # appraisal needs the TCB judged
    with serving(served) as url:
        code = snp_cli.main(
            [str(report), "--kds-url", url, "--product", "milan", "--no-kds-crl", "--json", *judged]
        )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    checks = {c["name"]: c["detail"] for c in out["checks"]}
    assert "collateral['vcek']" in checks["certificate"] and checks["tcb"].startswith(
        "certificate SPLs equal"
    )
    assert served.requests[0].startswith("/vcek/v1/Milan/d49554ec717f4e5b")
    assert served.requests[0].endswith("?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115")


def test_kds_crl_path_and_missing_product(tmp_path, capsys):
    """The ARK's CRL is fetched and judged: a SYNTHETIC CRL (not AMD's: there is none in the
    vectors) signed by another key is refused; without --product the KDS path is unknown."""
    from tests.collateral_helpers import synthetic_crl

    report = tmp_path / "report.bin"
    report.write_bytes(snp("virtee-sev/report_milan.bin"))
    routes = {**_kds_routes(), "/vcek/v1/Milan/crl": Route(synthetic_crl("ARK-Milan"))}
    with serving(Served(routes)) as url:
        code = snp_cli.main([str(report), "--kds-url", url, "--product", "milan", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 1 and {c["name"] for c in out["checks"] if not c["passed"]} == {"crl"}
        assert snp_cli.main([str(report), "--kds-url", url]) == 2
    assert snp_cli.main([str(report), "--kds-url", unreachable_url(), "--product", "milan"]) == 1


# ---- NVIDIA RIM service ----------------------------------------------------------------------


def test_rim_ids_and_service_answers(vectors):
    from tests.nvidia_helpers import real_evidence

    ev = real_evidence(vectors)
    ids = rim_ids(ev.data)
    assert ids == {
        "driver": "NV_GPU_DRIVER_GH100_550.90.07",
        "vbios": "NV_GPU_VBIOS_1010_0200_882_96009F0001",
    }
    tag = (vectors / "nvidia/nvtrust/1010_0200_882_96005E0001_PROD.swidtag").read_bytes()
    routes = rim_route(ids["vbios"], tag)
    with serving(Served(routes)) as url:
        assert RimServiceClient(url, FAST).get(ids["vbios"]) == tag
        with pytest.raises(FetchError, match="HTTP 404"):
            RimServiceClient(url, FAST).collateral(ev.data)
    body = json.loads(routes[f"/v1/rim/{ids['vbios']}"].body)
    body["sha256"] = "00" * 32
    forged = {f"/v1/rim/{ids['vbios']}": Route(json.dumps(body).encode())}
    with serving(Served(forged)) as url, pytest.raises(FetchError, match="not the digest"):
        RimServiceClient(url, FAST).get(ids["vbios"])


# ---- parsers, fuzzed -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_crl_bodies_of_any_bytes_give_der_or_one_error(body: bytes) -> None:
    try:
        der = pcs.crl_der(body, "CRL")
    except CollateralError as exc:
        assert "\n" not in str(exc)
    else:
        assert der[:1] == b"\x30"


def test_crl_body_forms_agree() -> None:
    der = tdx("go-tdx-guest", "rootcrl.der")
    pem = b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(der) + b"-----END X509 CRL-----\n"
    assert pcs.crl_der(der, "x") == pcs.crl_der(der.hex().encode(), "x") == pcs.crl_der(pem, "x") == der


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "needed": _values,
            "sets": st.lists(
                st.dictionaries(st.sampled_from(["evidence", "source", "fetched", "files"]), _values),
                max_size=2,
            ),
            "errors": _values,
        }
    )
    | _values
)
def test_malformed_collateral_records_are_refused_not_crashed(record: object) -> None:
    problem = check_record(record)
    assert problem is None or problem.startswith("collateral")
    if problem is None:
        assert isinstance(record, dict) and all(isinstance(s["files"], dict) for s in record["sets"])


def test_trusted_loader_evidence_verify_passes_pccs_url_through(tmp_path) -> None:
    from tests.conftest import cli

    with serving(Served(go_pcs())) as url:
        res = cli(
            "evidence",
            "verify",
            "--type",
            "tdx",
            _quote(tmp_path, "trustee_4"),
            "--pccs-url",
            url,
            "--at",
            "2023-07-01",
            "--any-image",
            "--allow-debug",
        )
    assert res.returncode == 0 and res.stdout.rstrip().endswith(
        "verified (tdx, TCB UpToDate; ANY IMAGE ACCEPTED (--any-image))"
    ), res


def test_turin_vcek_query_and_cache_keys_that_escape_are_refused(tmp_path) -> None:
    from attestation.sevsnp.kds import vcek_query
    from attestation.sevsnp.products import Product

    raw = snp("virtee-sev/report_milan.bin")
    rep = snp_report.parse(raw)
    with pytest.raises(CollateralError, match="non-zero reserved bytes"):
        vcek_query(rep, Product.TURIN)  # Milan's TCB read in Turin's layout
    synthetic = bytearray(raw)  # SYNTHETIC: REPORTED_TCB (0x180) rewritten in Turin's layout
    synthetic[0x180:0x188] = bytes([9, 4, 0, 24, 0, 0, 0, 80])
    hwid, query = vcek_query(snp_report.parse(bytes(synthetic)), Product.TURIN)
    assert hwid == rep.chip_id[:8].hex() and query == "fmcSPL=9&blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=80"
    hwid, query = vcek_query(rep, Product.MILAN)
    assert len(hwid) == 128 and query == "blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"
    for key in ("../x", "a/../../b", "/abs", "a b", ""):
        with pytest.raises(FetchError, match="collateral key"):
            Fetcher(offline_dir=tmp_path).get(key, "http://127.0.0.1:1/", limit=10)
    with pytest.raises(FetchError, match="expected an http"):
        Fetcher().get("k", "file:///etc/passwd", limit=10)


def test_a_server_trickling_bytes_is_cut_off() -> None:
    """Each byte arrives within the socket timeout, but the whole answer would take 20 s."""
    routes = {"/slow": Route(b"x" * 100, trickle=0.2)}
    with serving(Served(routes)) as url, pytest.raises(FetchError, match=r"not complete within 0\.5 s"):
        Fetcher(timeout=0.5, attempts=1).get("slow", f"{url}/slow", limit=1000)
