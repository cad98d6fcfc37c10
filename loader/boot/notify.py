"""sd_notify(3) over the NOTIFY_SOCKET datagram socket, stdlib only.

The loader runs one job per boot under a `Type=notify` unit (see docs/operations.md):
READY=1 once the configuration is validated and the ephemeral key exists, STATUS= for each
boot step, a final STATUS with the verdict, then the process exits with the job's exit code.

Notification is best effort, as in libsystemd: no socket means no-op, and a failed send is
logged once and never changes the job's outcome. The workload does not inherit the socket:
the runner gives it a minimal environment without NOTIFY_SOCKET.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("trusted-loader.notify")

MAX_STATUS = 512


def socket_address(value: str | None) -> str | bytes | None:
    """The address to send to: an absolute path, or an abstract name ('@' → leading NUL).

    Anything else (unset, empty, relative path, vsock) is not supported and yields None.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


def _clean(text: str) -> str:
    """One line, bounded: a newline in a value would start a new assignment."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat[:MAX_STATUS]


class Notifier:
    """Sends state changes to the service manager; does nothing without a socket."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = socket_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET %r is not an absolute path or @abstract name; not notifying", raw)
        return cls(address)

    @classmethod
    def disabled(cls) -> Notifier:
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send one datagram of KEY=value lines; True if it was delivered."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={_clean(value)}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8"), self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify the service manager: %s", exc.strerror or exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready="1", status=status, mainpid=str(os.getpid()))

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def stopping(self, status: str) -> bool:
        return self.send(stopping="1", status=status)
