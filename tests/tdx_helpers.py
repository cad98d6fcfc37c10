"""Shared pieces of the TDX tests: where the vectors are, collateral sets, pinned times."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest

from attestation.evidence import Evidence, Result, Trust
from attestation.tdx.attester import MEASUREMENTS_DIR
from attestation.tdx.verifier import TdxVerifier
from tests.fake_tsm import FakeTsmKernel

REPO = Path(__file__).resolve().parents[1]


def vectors_dir() -> Path:
    """TL_VECTORS if set, else ../shared/vectors beside the repository (CI clones it there)."""
    env = os.environ.get("TL_VECTORS")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "vectors", REPO / "shared" / "vectors"]
    for path in candidates:
        if (path / "MANIFEST.md").is_file():
            return path
    pytest.fail(
        f"attestation vectors not found (looked in {', '.join(map(str, candidates))}; set TL_VECTORS)"
    )


def tdx(*parts: str) -> bytes:
    return vectors_dir().joinpath("tdx", *parts).read_bytes()


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


# Evaluation times the source projects pinned, and the manifest's reference "now".
GO_V4_AT = utc("2023-07-01")
GO_V5_AT = utc("2026-02-03")
TRUSTEE_AT = utc("2025-11-01")
NOW = utc("2026-11-21")

QUOTES = {
    "go_v4": ("go-tdx-guest", "tdx_prod_quote_SPR_E4.dat"),
    "go_v5": ("go-tdx-guest", "quote_v5_sample.dat"),
    "go_cos": ("go-tdx-guest", "ccel_cos-113-tdx-quote.dat"),
    "trustee_4": ("trustee", "tdx_quote_4.dat"),
    "trustee_5": ("trustee", "tdx_quote_5.dat"),
    "trustee_6": ("trustee", "tdx_quote_6.dat"),
    "azure": ("trustee", "az-tdx-vtpm_td-quote.bin"),
}


def quote_bytes(name: str) -> bytes:
    return tdx(*QUOTES[name])


def go_v4_collateral(with_crls: bool = True) -> dict[str, bytes]:
    out = {
        "tcb_info.json": tdx("go-tdx-guest", "sample_tcbInfo_response"),
        "tcb_info_issuer_chain.pem": tdx("go-tdx-guest", "tcbinfo_issuer_chain.pem"),
        "qe_identity.json": tdx("go-tdx-guest", "sample_qeIdentity_response"),
        "qe_identity_issuer_chain.pem": tdx("go-tdx-guest", "qeidentity_issuer_chain.pem"),
    }
    if with_crls:
        out["pck_crl.der"] = tdx("go-tdx-guest", "pckcrl")
        out["pck_crl_issuer_chain.pem"] = tdx("go-tdx-guest", "pckcrl_issuer_chain.pem")
        out["root_ca_crl.der"] = tdx("go-tdx-guest", "rootcrl.der")
    return out


def trustee_collateral(chain: str = "renewed") -> dict[str, bytes]:
    signing = (
        tdx("intel", "tcb_signing_chain_renewed.pem")
        if chain == "renewed"
        else tdx("go-tdx-guest", "tcbinfo_issuer_chain.pem")
    )
    return {
        "tcb_info.json": tdx("trustee", "tcbInfo.json"),
        "tcb_info_issuer_chain.pem": signing,
        "qe_identity.json": tdx("trustee", "enclaveIdentity.json"),
        "qe_identity_issuer_chain.pem": signing,
    }


def go_v5_collateral() -> dict[str, bytes]:
    """The only TCB Info for the v5 quote's FMSPC; the only TD_QE identity near 2026-02 is 2023's."""
    return {
        "tcb_info.json": tdx("go-tdx-guest", "sample_tcbinfo_response_v5"),
        "tcb_info_issuer_chain.pem": tdx("intel", "tcb_signing_chain_renewed.pem"),
        "qe_identity.json": tdx("go-tdx-guest", "sample_qeIdentity_response"),
        "qe_identity_issuer_chain.pem": tdx("intel", "tcb_signing_chain_renewed.pem"),
    }


def verify(
    data: bytes,
    at: dt.datetime,
    collateral: dict[str, bytes] | None = None,
    expected: bytes | None = None,
    **options: object,
) -> Result:
    trust = Trust(collateral=collateral or {}, options=options)
    return TdxVerifier().verify(Evidence("tdx", data), expected_report_data=expected, trust=trust, at=at)


def check(result: Result, name: str) -> bool:
    matches = [c for c in result.checks if c.name == name]
    assert len(matches) == 1, f"expected one check named {name!r}, found {[c.name for c in result.checks]}"
    return matches[0].passed


def failed(result: Result) -> set[str]:
    return {c.name for c in result.failures}


ROOT = Path("/fake")


class FakeTdxKernel(FakeTsmKernel):
    """configfs-tsm plus the tdx_guest measurement files: a 48-byte write extends the register."""

    def __init__(self, quote_blob: bytes) -> None:
        super().__init__(root=ROOT, provider="tdx_guest", quote=lambda inblob, _lvl: (quote_blob, b""))
        self.inblobs: list[bytes] = []
        self.rtmrs = {i: bytes(48) for i in range(4)}
        self._quote_blob = quote_blob
        self.quote = self._record

    def _record(self, inblob: bytes, _lvl: int | None) -> tuple[bytes, bytes]:
        self.inblobs.append(inblob)
        return self._quote_blob, b""

    def _rtmr_index(self, path: Path) -> int | None:
        if path.parent != ROOT / MEASUREMENTS_DIR:
            return None
        name = path.name
        if name.startswith("rtmr") and name.endswith(":sha384"):
            return int(name[4])
        raise FileNotFoundError(2, "No such file or directory", str(path))

    def write(self, path: Path, data: bytes) -> None:
        index = self._rtmr_index(path)
        if index is None:
            return super().write(path, data)
        if index not in (2, 3) or len(data) != 48:
            raise OSError(22, "Invalid argument", str(path))
        self.rtmrs[index] = hashlib.sha384(self.rtmrs[index] + data).digest()
        return None

    def read(self, path: Path) -> bytes:
        index = self._rtmr_index(path)
        return super().read(path) if index is None else self.rtmrs[index]
