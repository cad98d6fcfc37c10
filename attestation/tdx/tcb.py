"""Intel's TCB evaluation for TDX quotes (PCS TDX TCB Info v3, QE Identity v2).

Rules (Intel PCS API "TDX TCB Info" and the DCAP Quote Verification Library):

1. Platform level: the first TCB level (Intel lists them from newest) where every SGX component
   SVN from the PCK certificate is >= the level's, the PCK's PCESVN is >= the level's, and every
   TEE_TCB_SVN byte of the TD report is >= the level's tdxtcbcomponents. When TEE_TCB_SVN[1]
   (the TDX module major version) is > 0 and the TCB Info has tdxModuleIdentities, bytes 0 and 1
   are the module's own identity and are compared from index 2 on; otherwise all 16 bytes are
   compared and the level's component 1 must equal TEE_TCB_SVN[1].
2. TDX module: its MRSIGNERSEAM and SEAM attributes (masked) must match tdxModule (module 1.0)
   or the identity "TDX_%02X" % TEE_TCB_SVN[1]; with an identity, its status is that of the first
   level whose isvsvn <= TEE_TCB_SVN[0].
3. QE: MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES must match the QE Identity; its
   status is that of the first level whose isvsvn <= the QE's ISVSVN.
4. The statuses converge: a QE or module that is OutOfDate makes UpToDate/SWHardeningNeeded
   OutOfDate and Configuration* OutOfDateConfigurationNeeded; Revoked anywhere is Revoked.
   Advisory IDs are the union of the matched levels'.
No match in step 1 or 3, or an identity mismatch, is not a status: evaluation fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from attestation.tdx.collateral import IsvLevel, QeIdentity, TcbInfo, TcbLevel, TdxModule
from attestation.tdx.pck import PckExtensions
from attestation.tdx.quote import SgxReportBody, TdReportBody

NOT_SUPPORTED = "NotSupported"
"""Reported when no TCB level matches: Intel's TCB_NOT_SUPPORTED, never acceptable."""


class TcbEvaluationError(Exception):
    """The quote does not match the collateral (identity mismatch or no TCB level)."""


@dataclass(frozen=True)
class TcbVerdict:
    status: str
    platform_status: str
    qe_status: str
    module_status: str | None
    module_id: str
    advisories: tuple[str, ...]
    tcb_date: str


def _all_ge(actual: bytes | tuple[int, ...], required: tuple[int, ...], start: int = 0) -> bool:
    return all(actual[i] >= required[i] for i in range(start, len(required)))


def _masked_equal(actual: bytes, mask: bytes, expected: bytes) -> bool:
    return all((a & m) == (e & m) for a, m, e in zip(actual, mask, expected, strict=True))


def _isv_level(levels: tuple[IsvLevel, ...], isvsvn: int, what: str) -> IsvLevel:
    for level in levels:
        if isvsvn >= level.isvsvn:
            return level
    raise TcbEvaluationError(f"{what}: ISVSVN {isvsvn} is below every TCB level")


def _module_identity(info: TcbInfo, body: TdReportBody) -> TdxModule:
    version = body.tee_tcb_svn[1]
    if version == 0:
        return info.tdx_module
    wanted = f"TDX_{version:02X}"
    for ident in info.tdx_module_identities:
        if ident.id.upper() == wanted:
            return ident
    raise TcbEvaluationError(f"TCB Info has no TDX module identity {wanted} (TEE_TCB_SVN[1] = {version})")


def check_module(info: TcbInfo, body: TdReportBody) -> TdxModule:
    module = _module_identity(info, body)
    if body.mrsignerseam != module.mrsigner:
        raise TcbEvaluationError(
            f"MRSIGNERSEAM {body.mrsignerseam.hex()[:16]}… differs from "
            f"{module.id} mrsigner {module.mrsigner.hex()[:16]}…"
        )
    if not _masked_equal(body.seam_attributes, module.attributes_mask, module.attributes):
        raise TcbEvaluationError(
            f"SEAM attributes {body.seam_attributes.hex()} do not match "
            f"{module.id} attributes {module.attributes.hex()}"
        )
    return module


def platform_level(info: TcbInfo, pck: PckExtensions, body: TdReportBody) -> TcbLevel:
    svn = body.tee_tcb_svn
    with_identities = svn[1] > 0 and bool(info.tdx_module_identities)
    start = 2 if with_identities else 0
    for level in info.levels:
        if not _all_ge(pck.tcb_components, level.sgx_components) or pck.pcesvn < level.pcesvn:
            continue
        if not _all_ge(svn, level.tdx_components, start):
            continue
        if not with_identities and level.tdx_components[1] != svn[1]:
            raise TcbEvaluationError(
                f"matched TCB level has TDX component 1 = {level.tdx_components[1]}, "
                f"TEE_TCB_SVN[1] is {svn[1]}: this TCB Info does not cover the platform's module"
            )
        return level
    raise TcbEvaluationError(
        f"no TCB level matches (PCK SGX components {list(pck.tcb_components)}, PCESVN {pck.pcesvn}, "
        f"TEE_TCB_SVN {svn.hex()}): TCB not supported"
    )


def check_qe(identity: QeIdentity, qe: SgxReportBody) -> IsvLevel:
    if qe.mrsigner != identity.mrsigner:
        raise TcbEvaluationError(
            f"QE MRSIGNER {qe.mrsigner.hex()} differs from QE Identity {identity.mrsigner.hex()}"
        )
    if qe.isvprodid != identity.isvprodid:
        raise TcbEvaluationError(f"QE ISVPRODID {qe.isvprodid}, QE Identity expects {identity.isvprodid}")
    if qe.miscselect & identity.miscselect_mask != identity.miscselect & identity.miscselect_mask:
        raise TcbEvaluationError(f"QE MISCSELECT {qe.miscselect:#010x} does not match QE Identity")
    if not _masked_equal(qe.attributes, identity.attributes_mask, identity.attributes):
        raise TcbEvaluationError(f"QE ATTRIBUTES {qe.attributes.hex()} do not match QE Identity")
    return _isv_level(identity.levels, qe.isvsvn, "QE")


def converge(status: str, other: str) -> str:
    if other == "Revoked" or status == "Revoked":
        return "Revoked"
    if other in ("OutOfDate", "OutOfDateConfigurationNeeded"):
        if status in ("UpToDate", "SWHardeningNeeded", "OutOfDate"):
            return "OutOfDate"
        return "OutOfDateConfigurationNeeded"
    return status


def evaluate(
    info: TcbInfo, identity: QeIdentity, pck: PckExtensions, body: TdReportBody, qe: SgxReportBody
) -> TcbVerdict:
    """Run Intel's TDX TCB evaluation; raise TcbEvaluationError when no status applies."""
    if pck.fmspc != info.fmspc:
        raise TcbEvaluationError(
            f"TCB Info is for FMSPC {info.fmspc.hex()}, the PCK certificate has {pck.fmspc.hex()}"
        )
    if pck.pceid != info.pce_id:
        raise TcbEvaluationError(
            f"TCB Info is for PCE-ID {info.pce_id.hex()}, the PCK certificate has {pck.pceid.hex()}"
        )
    module = check_module(info, body)
    level = platform_level(info, pck, body)
    qe_level = check_qe(identity, qe)
    advisories = set(level.advisories) | set(qe_level.advisories)
    status = converge(level.status, qe_level.status)
    module_status = None
    if module.levels:
        module_level = _isv_level(module.levels, body.tee_tcb_svn[0], f"TDX module {module.id}")
        module_status = module_level.status
        advisories |= set(module_level.advisories)
        status = converge(status, module_status)
    return TcbVerdict(
        status=status,
        platform_status=level.status,
        qe_status=qe_level.status,
        module_status=module_status,
        module_id=module.id,
        advisories=tuple(sorted(advisories)),
        tcb_date=level.date,
    )
