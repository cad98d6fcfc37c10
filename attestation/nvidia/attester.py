"""GPU evidence through NVML: one SPDM measurement report and certificate chain per CC-mode GPU.

NVML comes from `nvidia-ml-py` (`import pynvml`), imported only when no NVML object is
injected (optional extra "nvidia"). Unlike the CPU attesters this one takes the 32-byte GPU
nonce (attestation.binding.gpu_nonce) and returns a list: every GPU in the machine must be
attested, so one failing GPU fails the whole collection. It checks what it can before
handing the evidence on (the report parses and carries the nonce asked for); the verifier
checks everything again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attestation.errors import AttestationError, AttesterFailure, AttesterUnavailable
from attestation.evidence import Evidence
from attestation.nvidia import spdm
from certs.chain import load_certificates
from certs.errors import CertsError

_NEED_EXTRA = "NVIDIA GPU attestation needs nvidia-ml-py: pip install 'cvm-trusted-loader[nvidia]'"
_PEM_END = b"-----END CERTIFICATE-----"


class NvidiaAttester:
    """Collects evidence of every GPU in confidential-computing mode."""

    tee = "nvidia"
    evidence_type = "nvidia"

    def __init__(self, root: Path = Path("/"), *, nvml: Any = None, **_options: object) -> None:
        self._nvml = nvml

    def _lib(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise AttesterUnavailable(_NEED_EXTRA) from exc
            self._nvml = pynvml
        return self._nvml

    def collect_all(self, nonce: bytes) -> list[Evidence]:
        """Evidence for each GPU, in NVML index order; raises AttesterUnavailable/AttesterFailure."""
        if len(nonce) != spdm.NONCE_LEN:
            raise AttesterFailure(f"nvidia: nonce must be {spdm.NONCE_LEN} bytes, got {len(nonce)}")
        nvml = self._lib()
        error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except error as exc:
            raise AttesterUnavailable(f"nvidia: NVML initialisation failed ({exc})") from exc
        try:
            self._require_cc_mode(nvml)
            count = nvml.nvmlDeviceGetCount()
            return [self._collect_one(nvml, index, nonce) for index in range(count)]
        except error as exc:
            raise AttesterFailure(f"nvidia: NVML call failed ({exc})") from exc
        finally:
            nvml.nvmlShutdown()

    def set_ready(self) -> None:
        """Tell the driver the GPUs are attested, so CUDA work is accepted (call after verification)."""
        nvml = self._lib()
        nvml.nvmlInit()
        try:
            nvml.nvmlSystemSetConfComputeGpusReadyState(
                getattr(nvml, "NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE", 1)
            )
        finally:
            nvml.nvmlShutdown()

    @staticmethod
    def _require_cc_mode(nvml: Any) -> None:
        state = nvml.nvmlSystemGetConfComputeState()
        if state.ccFeature != getattr(nvml, "NVML_CC_SYSTEM_FEATURE_ENABLED", 1):
            raise AttesterUnavailable("nvidia: GPU confidential computing is not enabled")
        if state.devToolsMode != getattr(nvml, "NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF", 0):
            raise AttesterFailure("nvidia: GPU CC dev-tools mode is on; it is not a protected configuration")

    def _collect_one(self, nvml: Any, index: int, nonce: bytes) -> Evidence:
        where = f"nvidia: GPU {index}"
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
        chain = _sized(
            cert.attestationCertChain, cert.attestationCertChainSize, f"{where}: certificate chain"
        )
        chain = _pem_chain(chain, where)
        rep = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
        raw = _sized(rep.attestationReport, rep.attestationReportSize, f"{where}: attestation report")
        try:
            report = spdm.parse(raw)
        except AttestationError as exc:
            raise AttesterFailure(f"{where}: malformed attestation report ({exc})") from exc
        if report.request.nonce != nonce:
            raise AttesterFailure(
                f"{where}: report carries nonce {report.request.nonce.hex()}, expected {nonce.hex()}"
            )
        return Evidence(type=self.evidence_type, data=raw, aux={"chain": chain})


def _sized(buffer: Any, size: int, what: str) -> bytes:
    data = bytes(buffer)
    if not 0 < size <= len(data):
        raise AttesterFailure(f"{what}: NVML reports size {size} for a {len(data)}-byte buffer")
    return data[:size]


def _pem_chain(data: bytes, where: str) -> bytes:
    """The chain as PEM text, leaf first, exactly as NVML returned it (trailing NULs dropped)."""
    text = data.rstrip(b"\x00")
    if not text.rstrip().endswith(_PEM_END):
        raise AttesterFailure(f"{where}: certificate chain is not PEM text")
    try:
        load_certificates(text, what=f"{where} certificate chain")
    except CertsError as exc:
        raise AttesterFailure(str(exc)) from exc
    return text
