"""A fake configfs-tsm kernel: the same semantics as drivers/virt/coco/tsm.c, in memory.

Entries appear on mkdir with `provider` and `generation`; every write to an attribute bumps
`generation`; reading `outblob` asks the fake quote service; `rmdir` removes the entry.
`races` makes a phantom writer bump the generation during that many reads of outblob;
`service_down` makes outblob read empty, as the kernel does when the host does not answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attestation.tsm import REPORT_DIR

QuoteFn = Callable[[bytes, int | None], tuple[bytes, bytes]]


@dataclass
class _Entry:
    generation: int = 0
    inblob: bytes = b""
    privlevel: int | None = None


@dataclass
class FakeTsmKernel:
    root: Path
    provider: str
    quote: QuoteFn
    races: int = 0
    service_down: bool = False
    entries: dict[str, _Entry] = field(default_factory=dict)
    created: int = 0

    def _split(self, path: Path) -> tuple[str, str | None]:
        rel = path.relative_to(self.root / REPORT_DIR)
        parts = rel.parts
        if len(parts) == 1:
            return parts[0], None
        if len(parts) == 2:
            return parts[0], parts[1]
        raise FileNotFoundError(2, "No such file or directory", str(path))

    def _entry(self, name: str, path: Path) -> _Entry:
        if name not in self.entries:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return self.entries[name]

    def mkdir(self, path: Path) -> None:
        name, attr = self._split(path)
        if attr is not None or name in self.entries:
            raise FileExistsError(17, "File exists", str(path))
        self.entries[name] = _Entry()
        self.created += 1

    def rmdir(self, path: Path) -> None:
        name, _ = self._split(path)
        self._entry(name, path)
        del self.entries[name]

    def write(self, path: Path, data: bytes) -> None:
        name, attr = self._split(path)
        entry = self._entry(name, path)
        if attr == "inblob":
            if len(data) > 64:
                raise OSError(22, "Invalid argument", str(path))
            entry.inblob = data
        elif attr == "privlevel":
            entry.privlevel = int(data)
        else:
            raise PermissionError(13, "Permission denied", str(path))
        entry.generation += 1

    def read(self, path: Path) -> bytes:
        name, attr = self._split(path)
        entry = self._entry(name, path)
        if attr == "provider":
            return self.provider.encode() + b"\n"
        if attr == "generation":
            return f"{entry.generation}\n".encode()
        if attr == "outblob":
            if self.races > 0:
                self.races -= 1
                entry.generation += 1
            if self.service_down:
                return b""
            return self.quote(entry.inblob, entry.privlevel)[0]
        if attr == "auxblob":
            return self.quote(entry.inblob, entry.privlevel)[1]
        raise FileNotFoundError(2, "No such file or directory", str(path))
