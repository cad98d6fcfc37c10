"""The /dev/sev-guest interface: SNP_GET_REPORT and SNP_GET_EXT_REPORT ioctls.

Layouts from linux/include/uapi/linux/sev-guest.h (natural C alignment, x86-64):
  struct snp_report_req          { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }           96 bytes
  struct snp_report_resp         { u8 data[4000]; }
  struct snp_ext_report_req      { struct snp_report_req data; u64 certs_address; u32 certs_len; } 112
  struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data; u64 exitinfo2; } 32
  SNP_GET_REPORT = _IOWR('S', 0, struct snp_guest_request_ioctl), SNP_GET_EXT_REPORT = ... 2.
The response data is MSG_REPORT_RSP (ABI spec): u32 STATUS, u32 REPORT_SIZE, 24 reserved
bytes, then the report. SNP_GET_EXT_REPORT fails with EIO and exitinfo2 = INVALID_LEN (VMM
error 1 in bits 63:32) when the certificate buffer is too small, and then holds the needed
length in certs_len. The ioctl function is a parameter, so tests drive this code against a
fake device that reads and writes the same structures.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.errors import AttesterFailure, AttesterUnavailable
from attestation.sevsnp import report

DEVICE = Path("dev/sev-guest")
MSG_VERSION = 1
PAGE_SIZE = 4096
CERTS_MAX = 0x4000  # SEV_FW_BLOB_MAX_SIZE: the largest certificate buffer the kernel takes
RESP_HEADER = 0x20  # MSG_REPORT_RSP: STATUS, REPORT_SIZE, reserved; then the report
VMM_ERR_INVALID_LEN = 1
STATUS_NAMES = {0x16: "INVALID_PARAM", 0x27: "INVALID_KEY"}

IoctlFn = Callable[[int, int, Any, bool], Any]


def _iowr(kind: str, nr: int, size: int) -> int:
    read_write = 3
    return read_write << 30 | size << 16 | ord(kind) << 8 | nr


class SnpReportReq(ctypes.Structure):
    _fields_ = (("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28))


class SnpReportResp(ctypes.Structure):
    _fields_ = (("data", ctypes.c_uint8 * 4000),)


class SnpExtReportReq(ctypes.Structure):
    _fields_ = (("data", SnpReportReq), ("certs_address", ctypes.c_uint64), ("certs_len", ctypes.c_uint32))


class SnpGuestRequestIoctl(ctypes.Structure):
    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


SNP_GET_REPORT = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))
SNP_GET_EXT_REPORT = _iowr("S", 0x2, ctypes.sizeof(SnpGuestRequestIoctl))


@dataclass(frozen=True)
class DeviceReport:
    report: bytes
    certs: bytes  # the certificate table, b"" when the host supplied none


def _default_ioctl() -> IoctlFn:
    import fcntl

    return fcntl.ioctl  # type: ignore[return-value]


def get_report(root: Path, user_data: bytes, *, vmpl: int = 0, ioctl: IoctlFn | None = None) -> DeviceReport:
    """An extended report (report and certificate table) from <root>/dev/sev-guest."""
    if len(user_data) != 64:
        raise AttesterFailure(f"sev-guest: user_data must be 64 bytes, found {len(user_data)}")
    path = root / DEVICE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise AttesterUnavailable(f"sev-guest: {path} not found (not an SEV-SNP guest?)") from exc
    except OSError as exc:
        raise AttesterFailure(f"sev-guest: cannot open {path}: {exc.strerror or exc}") from exc
    try:
        return _ext_report(fd, path, user_data, vmpl, ioctl or _default_ioctl())
    finally:
        os.close(fd)


def _ext_report(fd: int, path: Path, user_data: bytes, vmpl: int, ioctl: IoctlFn) -> DeviceReport:
    certs_len = CERTS_MAX
    for _ in range(2):
        req = SnpExtReportReq()
        ctypes.memmove(req.data.user_data, user_data, 64)
        req.data.vmpl = vmpl
        certs = ctypes.create_string_buffer(certs_len)
        req.certs_address = ctypes.addressof(certs)
        req.certs_len = certs_len
        resp = SnpReportResp()
        guest = _guest_request(req, resp)
        try:
            ioctl(fd, SNP_GET_EXT_REPORT, guest, True)
        except OSError as exc:
            if exc.errno == errno.ENOTTY:
                return DeviceReport(_plain_report(fd, path, user_data, vmpl, ioctl), b"")
            if exc.errno == errno.EIO and guest.exitinfo2 >> 32 == VMM_ERR_INVALID_LEN:
                needed = req.certs_len
                if needed <= certs_len or needed > CERTS_MAX:
                    raise AttesterFailure(
                        f"sev-guest: host certificate table needs {needed} bytes; at most {CERTS_MAX} allowed"
                    ) from exc
                certs_len = needed
                continue
            raise _ioctl_error(path, "SNP_GET_EXT_REPORT", exc, guest) from exc
        table = certs.raw[: req.certs_len] if req.certs_len <= certs_len else certs.raw
        return DeviceReport(_response_report(resp, path), table if any(table) else b"")
    raise AttesterFailure(f"sev-guest: {path}: certificate table length kept changing")


def _plain_report(fd: int, path: Path, user_data: bytes, vmpl: int, ioctl: IoctlFn) -> bytes:
    req = SnpReportReq()
    ctypes.memmove(req.user_data, user_data, 64)
    req.vmpl = vmpl
    resp = SnpReportResp()
    guest = _guest_request(req, resp)
    try:
        ioctl(fd, SNP_GET_REPORT, guest, True)
    except OSError as exc:
        raise _ioctl_error(path, "SNP_GET_REPORT", exc, guest) from exc
    return _response_report(resp, path)


def _guest_request(req: ctypes.Structure, resp: SnpReportResp) -> SnpGuestRequestIoctl:
    guest = SnpGuestRequestIoctl()
    guest.msg_version = MSG_VERSION
    guest.req_data = ctypes.addressof(req)
    guest.resp_data = ctypes.addressof(resp)
    return guest


def _ioctl_error(path: Path, name: str, exc: OSError, guest: SnpGuestRequestIoctl) -> AttesterFailure:
    fw, vmm = guest.exitinfo2 & 0xFFFFFFFF, guest.exitinfo2 >> 32
    return AttesterFailure(
        f"sev-guest: {name} on {path} failed: {exc.strerror or exc} "
        f"(firmware error 0x{fw:x}, VMM error 0x{vmm:x})"
    )


def _response_report(resp: SnpReportResp, path: Path) -> bytes:
    raw = bytes(resp.data)
    status, size = struct.unpack_from("<II", raw, 0)
    if status != 0:
        name = STATUS_NAMES.get(status, "unknown")
        raise AttesterFailure(f"sev-guest: {path}: MSG_REPORT_RSP STATUS 0x{status:x} ({name})")
    if size != report.REPORT_SIZE:
        raise AttesterFailure(f"sev-guest: {path}: REPORT_SIZE is {size}, expected {report.REPORT_SIZE}")
    return raw[RESP_HEADER : RESP_HEADER + size]
