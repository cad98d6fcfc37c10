"""The report's `containment` record: how the engine was contained (docs/containment.md)."""

from __future__ import annotations

import os
from typing import Any

from loader.report import boundary


def uncontained_record() -> dict[str, Any]:
    """`[run] isolation = "none"`: the engine ran as the loader, in the loader's view."""
    return {
        "isolation": "none",
        "runner": "process",
        "uid": os.getuid(),
        "gid": os.getgid(),
        "user_namespace": False,
        "namespaces": [],
        "network": "host",
        "devices": [],
    }


def oci_record(run: Any, user: tuple[int, int] | None) -> dict[str, Any]:
    """What podman is asked for (loader.boot.ocirun.run_argv): its namespaces, no capability,
    no_new_privs, the engine's uid/gid as root (`user`)."""
    settings = run.oci
    net = settings.network if settings is not None else "none"
    return {
        "isolation": "oci",
        "runner": "oci",
        "uid": user[0] if user else None,
        "gid": user[1] if user else None,
        "user_namespace": False,
        "namespaces": ["pid", "mount", "ipc", "uts"] + (["net"] if net == "none" else []),
        "network": net,
        "devices": [],
    }


def boundary_text(tee: str, rtmr3_initial: bytes | None) -> str:
    """The boundary in the hardware record, or why there is none."""
    if rtmr3_initial is not None:
        return f"rtmr3 {boundary.WORKLOAD_START}"
    return boundary.NO_REGISTER if tee == "sev-snp" else "none"
