"""NVIDIA GPU attestation: SPDM measurement reports from Hopper GPUs in confidential-computing mode.

spdm (THE report parser) and opaque (NVIDIA's TLV fields), device (GPU chain, signature,
FWID), rim (reference manifests, XML-DSig), verifier (NvidiaVerifier), attester
(NvidiaAttester over NVML), mockgpu (test-only GPU, "mock-gpu" evidence), cli.
"""

from __future__ import annotations

from typing import Any

GPU_MODES = ("none", "nvml", "mock")
GPU_EVIDENCE_TYPES = ("nvidia", "mock-gpu")


def gpu_attester(mode: str, **options: Any) -> Any:
    """The GPU attester for a configured mode ("nvml" or "mock"); None for "none"."""
    if mode == "none":
        return None
    if mode == "nvml":
        from attestation.nvidia.attester import NvidiaAttester

        return NvidiaAttester(**options)
    if mode == "mock":
        from attestation.nvidia.mockgpu import MockGpuAttester

        return MockGpuAttester(**options)
    raise ValueError(f"gpu mode: expected one of {', '.join(GPU_MODES)}, found {mode!r}")
