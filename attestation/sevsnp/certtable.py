"""The SEV-SNP certificate table the host hands out with an extended report.

Format (GHCB spec, "SNP Extended Guest Request"; configfs-tsm `auxblob` for sev_guest):
an array of 24-byte entries {GUID (16 bytes, RFC 4122 byte order), offset (u32 LE),
length (u32 LE)}, terminated by an all-zero entry; offsets count from the start of the table
and point at DER certificates after the entries. The buffer is usually zero-padded to a page
multiple, so bytes after the last certificate are allowed only if they are zero.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass

from attestation.errors import EvidenceFormatError

ENTRY_SIZE = 24
GUID_SIZE = 16
MAX_TABLE_BYTES = 64 * 1024
MAX_ENTRIES = 64

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
NAMES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}


@dataclass(frozen=True)
class CertTable:
    entries: tuple[tuple[uuid.UUID, bytes], ...]

    def get(self, guid: uuid.UUID) -> bytes | None:
        return next((blob for g, blob in self.entries if g == guid), None)

    def evidence_aux(self) -> dict[str, bytes]:
        """The Evidence.aux entries: "vcek"/"vlek" as DER, "chain" as PEM (ASK or ASVK, then ARK)."""
        aux: dict[str, bytes] = {}
        for guid, name in ((VCEK_GUID, "vcek"), (VLEK_GUID, "vlek")):
            blob = self.get(guid)
            if blob:
                aux[name] = blob
        chain = [b for b in (self.get(ASK_GUID), self.get(ARK_GUID)) if b]
        if chain:
            aux["chain"] = b"".join(der_to_pem(b) for b in chain)
        return aux


def der_to_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def parse(data: bytes, *, what: str = "certificate table") -> CertTable:
    if len(data) > MAX_TABLE_BYTES:
        raise EvidenceFormatError(f"{what}: {len(data)} bytes, more than the {MAX_TABLE_BYTES} allowed")
    entries: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + ENTRY_SIZE > len(data):
            raise EvidenceFormatError(
                f"{what}: entry {len(entries)} at offset {pos} needs {ENTRY_SIZE} bytes, "
                f"{len(data) - pos} left (missing all-zero terminator)"
            )
        raw_guid = data[pos : pos + GUID_SIZE]
        offset, length = struct.unpack_from("<II", data, pos + GUID_SIZE)
        pos += ENTRY_SIZE
        if not any(raw_guid) and offset == 0 and length == 0:
            break
        if len(entries) == MAX_ENTRIES:
            raise EvidenceFormatError(f"{what}: more than {MAX_ENTRIES} entries")
        entries.append((uuid.UUID(bytes=bytes(raw_guid)), offset, length))
    header_end = pos
    spans: list[tuple[int, int]] = []
    for index, (guid, offset, length) in enumerate(entries):
        if length == 0 or offset < header_end or offset + length > len(data):
            raise EvidenceFormatError(
                f"{what}: entry {index} ({NAMES.get(guid, guid)}) offset {offset} length {length} "
                f"is outside the certificate area {header_end}..{len(data)}"
            )
        spans.append((offset, offset + length))
    if len({g for g, _, _ in entries}) != len(entries):
        raise EvidenceFormatError(f"{what}: a GUID appears twice")
    for (a_start, a_end), (b_start, _) in zip(sorted(spans), sorted(spans)[1:], strict=False):
        if b_start < a_end:
            raise EvidenceFormatError(f"{what}: certificates at {a_start} and {b_start} overlap")
    used = bytearray(len(data))
    for start, end in spans:
        used[start:end] = b"\x01" * (end - start)
    stray = next((i for i in range(header_end, len(data)) if not used[i] and data[i]), None)
    if stray is not None:
        raise EvidenceFormatError(f"{what}: non-zero byte at offset {stray} outside every certificate")
    return CertTable(tuple((guid, bytes(data[off : off + length])) for guid, off, length in entries))


def build(certs: list[tuple[uuid.UUID, bytes]], *, pad_to: int = 0) -> bytes:
    """The inverse of `parse`: a table with `certs` in order, zero-padded to `pad_to` bytes."""
    header = ENTRY_SIZE * (len(certs) + 1)
    out = bytearray()
    body = bytearray()
    for guid, der in certs:
        out += guid.bytes + struct.pack("<II", header + len(body), len(der))
        body += der
    out += bytes(ENTRY_SIZE) + body
    return bytes(out) + bytes(max(0, pad_to - len(out)))
