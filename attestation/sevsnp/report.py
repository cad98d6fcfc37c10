"""THE parser of the SEV-SNP ATTESTATION_REPORT (0x4A0 bytes).

Offsets and names follow AMD's "SEV Secure Nested Paging Firmware ABI Specification"
(pub. 56860), table "ATTESTATION_REPORT Structure". Report versions 2, 3 and 5 are accepted:
version 3 adds CPUID_FAM_ID/CPUID_MOD_ID/CPUID_STEP, version 5 LAUNCH_MIT_VECTOR and
CURRENT_MIT_VECTOR; in older versions those bytes are reserved.

Policy on odd input: the report must be exactly 0x4A0 bytes (no short data, no trailing
bytes), and every reserved byte must be zero, including the unsigned tail of the SIGNATURE
field, so that no byte of an accepted report is unaccounted for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from attestation.errors import EvidenceFormatError
from attestation.sevsnp.products import Product
from attestation.sevsnp.tcb import TcbVersion

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000-0x29F
SUPPORTED_VERSIONS = (2, 3, 5)

# Field offsets (ATTESTATION_REPORT Structure).
VERSION = 0x000
GUEST_SVN = 0x004
POLICY = 0x008
FAMILY_ID = 0x010
IMAGE_ID = 0x020
VMPL = 0x030
SIGNATURE_ALGO = 0x034
CURRENT_TCB = 0x038
PLATFORM_INFO = 0x040
KEY_INFO = 0x048  # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY
REPORT_DATA = 0x050
MEASUREMENT = 0x090
HOST_DATA = 0x0C0
ID_KEY_DIGEST = 0x0E0
AUTHOR_KEY_DIGEST = 0x110
REPORT_ID = 0x140
REPORT_ID_MA = 0x160
REPORTED_TCB = 0x180
CPUID_FAM_ID = 0x188  # version >= 3
CPUID_MOD_ID = 0x189
CPUID_STEP = 0x18A
CHIP_ID = 0x1A0
COMMITTED_TCB = 0x1E0
CURRENT_BUILD = 0x1E8
CURRENT_MINOR = 0x1E9
CURRENT_MAJOR = 0x1EA
COMMITTED_BUILD = 0x1EC
COMMITTED_MINOR = 0x1ED
COMMITTED_MAJOR = 0x1EE
LAUNCH_TCB = 0x1F0
LAUNCH_MIT_VECTOR = 0x1F8  # version >= 5
CURRENT_MIT_VECTOR = 0x200
SIGNATURE = 0x2A0
SIGNATURE_R = 0x2A0  # 72 bytes, little-endian
SIGNATURE_S = 0x2E8  # 72 bytes, little-endian
SIGNATURE_COMPONENT_SIZE = 72
SIGNATURE_RESERVED = 0x330

SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}

# (start, end) byte ranges that must be zero, per report version.
_RESERVED_COMMON = (
    (0x04C, 0x050),
    (0x1EB, 0x1EC),
    (0x1EF, 0x1F0),
    (SIGNATURE_RESERVED, REPORT_SIZE),
)
_RESERVED_BY_VERSION = {
    2: ((0x188, 0x1A0), (0x1F8, 0x2A0)),
    3: ((0x18B, 0x1A0), (0x1F8, 0x2A0)),
    5: ((0x18B, 0x1A0), (0x208, 0x2A0)),
}
_KEY_INFO_RESERVED_MASK = ~0x1F & 0xFFFFFFFF

# GUEST POLICY bits (ABI spec, "Guest Policy Structure").
POLICY_BITS = {
    16: "smt",
    17: "reserved_must_be_one",
    18: "migrate_ma",
    19: "debug",
    20: "single_socket",
    21: "cxl_allow",
    22: "mem_aes_256_xts",
    23: "rapl_dis",
    24: "ciphertext_hiding",
    25: "page_swap_disable",
}
POLICY_KNOWN_MASK = 0xFFFF | sum(1 << b for b in POLICY_BITS)

# PLATFORM_INFO bits (ABI spec, "PLATFORM_INFO Field").
PLATFORM_INFO_BITS = {
    0: "smt_en",
    1: "tsme_en",
    2: "ecc_en",
    3: "rapl_dis",
    4: "ciphertext_hiding_en",
    5: "alias_check_complete",
    7: "tio_en",
}


@dataclass(frozen=True)
class Policy:
    raw: int

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    def bit(self, name: str) -> bool:
        index = next(b for b, n in POLICY_BITS.items() if n == name)
        return bool(self.raw >> index & 1)

    @property
    def debug(self) -> bool:
        return self.bit("debug")

    @property
    def migrate_ma(self) -> bool:
        return self.bit("migrate_ma")

    @property
    def unknown_bits(self) -> int:
        return self.raw & ~POLICY_KNOWN_MASK

    def to_json(self) -> dict[str, Any]:
        flags = {name: bool(self.raw >> b & 1) for b, name in POLICY_BITS.items()}
        return {
            "raw": f"{self.raw:016x}",
            "abi_major": self.abi_major,
            "abi_minor": self.abi_minor,
            **flags,
            "unknown_bits": f"{self.unknown_bits:016x}",
        }


@dataclass(frozen=True)
class AttestationReport:
    """One parsed report; byte fields keep their on-wire order, TCB fields their raw value."""

    raw: bytes
    version: int
    guest_svn: int
    policy: Policy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid: tuple[int, int, int] | None  # (family, model, stepping), version >= 3
    chip_id: bytes
    committed_tcb: int
    current_version: tuple[int, int, int]  # (major, minor, build)
    committed_version: tuple[int, int, int]
    launch_tcb: int
    launch_mit_vector: int | None  # version >= 5
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key_name(self) -> str:
        return SIGNING_KEYS.get(self.signing_key, f"reserved({self.signing_key})")

    def tcb(self, field: str, product: Product) -> TcbVersion:
        """One of current_tcb, reported_tcb, committed_tcb, launch_tcb, decoded for `product`."""
        return TcbVersion.decode(getattr(self, field), product)

    def to_json(self, product: Product | None = None) -> dict[str, Any]:
        """Decoded fields, binary ones in hex; TCBs split into parts when the product is known."""

        def tcb(field: str) -> Any:
            return self.tcb(field, product).to_json() if product else {"raw": f"{getattr(self, field):016x}"}

        out: dict[str, Any] = {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": self.policy.to_json(),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": tcb("current_tcb"),
            "platform_info": {
                "raw": f"{self.platform_info:016x}",
                **{name: bool(self.platform_info >> b & 1) for b, name in PLATFORM_INFO_BITS.items()},
            },
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "signing_key": self.signing_key_name,
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": tcb("reported_tcb"),
            "chip_id": self.chip_id.hex(),
            "committed_tcb": tcb("committed_tcb"),
            "current_version": "{}.{}.{}".format(*self.current_version),
            "committed_version": "{}.{}.{}".format(*self.committed_version),
            "launch_tcb": tcb("launch_tcb"),
        }
        if self.cpuid is not None:
            family, model, stepping = self.cpuid
            out["cpuid"] = {"family": f"{family:02x}", "model": f"{model:02x}", "stepping": f"{stepping:02x}"}
        if self.launch_mit_vector is not None and self.current_mit_vector is not None:
            out["launch_mit_vector"] = f"{self.launch_mit_vector:016x}"
            out["current_mit_vector"] = f"{self.current_mit_vector:016x}"
        return out


def _u8(data: bytes, off: int) -> int:
    return data[off]


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def _bytes(data: bytes, off: int, size: int) -> bytes:
    return bytes(data[off : off + size])


def _version_triple(data: bytes, build: int, minor: int, major: int) -> tuple[int, int, int]:
    return _u8(data, major), _u8(data, minor), _u8(data, build)


def parse(data: bytes, *, what: str = "SEV-SNP report") -> AttestationReport:
    """Parse and bounds-check one ATTESTATION_REPORT; EvidenceFormatError on any deviation."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError(f"{what}: expected bytes, found {type(data).__name__}")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        kind = "short" if len(data) < REPORT_SIZE else "trailing data"
        raise EvidenceFormatError(
            f"{what}: expected {REPORT_SIZE} (0x{REPORT_SIZE:X}) bytes, found {len(data)} ({kind})"
        )
    version = _u32(data, VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(
            f"{what}: VERSION is {version}, expected one of {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    for start, end in _RESERVED_COMMON + _RESERVED_BY_VERSION[version]:
        if any(data[start:end]):
            first = next(i for i in range(start, end) if data[i])
            raise EvidenceFormatError(
                f"{what}: reserved byte at 0x{first:03X} (range 0x{start:03X}-0x{end - 1:03X}) "
                f"is 0x{data[first]:02X}, expected 0"
            )
    key_info = _u32(data, KEY_INFO)
    if key_info & _KEY_INFO_RESERVED_MASK:
        raise EvidenceFormatError(
            f"{what}: reserved bits 31:5 of the key-info field are set (0x{key_info:08X})"
        )
    v3 = version >= 3
    v5 = version >= 5
    return AttestationReport(
        raw=data,
        version=version,
        guest_svn=_u32(data, GUEST_SVN),
        policy=Policy(_u64(data, POLICY)),
        family_id=_bytes(data, FAMILY_ID, 16),
        image_id=_bytes(data, IMAGE_ID, 16),
        vmpl=_u32(data, VMPL),
        signature_algo=_u32(data, SIGNATURE_ALGO),
        current_tcb=_u64(data, CURRENT_TCB),
        platform_info=_u64(data, PLATFORM_INFO),
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info >> 1 & 1),
        signing_key=key_info >> 2 & 0x7,
        report_data=_bytes(data, REPORT_DATA, 64),
        measurement=_bytes(data, MEASUREMENT, 48),
        host_data=_bytes(data, HOST_DATA, 32),
        id_key_digest=_bytes(data, ID_KEY_DIGEST, 48),
        author_key_digest=_bytes(data, AUTHOR_KEY_DIGEST, 48),
        report_id=_bytes(data, REPORT_ID, 32),
        report_id_ma=_bytes(data, REPORT_ID_MA, 32),
        reported_tcb=_u64(data, REPORTED_TCB),
        cpuid=(_u8(data, CPUID_FAM_ID), _u8(data, CPUID_MOD_ID), _u8(data, CPUID_STEP)) if v3 else None,
        chip_id=_bytes(data, CHIP_ID, 64),
        committed_tcb=_u64(data, COMMITTED_TCB),
        current_version=_version_triple(data, CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR),
        committed_version=_version_triple(data, COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR),
        launch_tcb=_u64(data, LAUNCH_TCB),
        launch_mit_vector=_u64(data, LAUNCH_MIT_VECTOR) if v5 else None,
        current_mit_vector=_u64(data, CURRENT_MIT_VECTOR) if v5 else None,
        signature_r=int.from_bytes(data[SIGNATURE_R : SIGNATURE_R + SIGNATURE_COMPONENT_SIZE], "little"),
        signature_s=int.from_bytes(data[SIGNATURE_S : SIGNATURE_S + SIGNATURE_COMPONENT_SIZE], "little"),
    )
