"""Talking to a JSON-RPC node that may lie: every failure one line naming the node and the method.

A node is a peer, not an authority. Whatever it answers is checked before use (types, sizes,
that a log is at our contract with our event and digest, that the logged bytes hash to the
digest); an answer that is malformed or does not verify raises NodeError, which delivery treats
as retryable (another node, or the same one later, may answer honestly) and the commands report
with the "node error" exit code. Nothing a node sends can surface as a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from loader.publish import recursion_limit_kept
from loader.publish.sinks import DeliveryError

with recursion_limit_kept():
    import requests
    from web3 import Web3
    from web3 import exceptions as w3x

# Exceptions meaning "the contract reverted"; the embedded chain adds eth-tester's own.
REVERTS: list[type[Exception]] = [w3x.ContractLogicError]


class NodeError(DeliveryError):
    """The node answered, but with something malformed or false; retry (perhaps elsewhere)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unavailable=True, node_error=True)


def node_label(w3: Web3) -> str:
    """The node as shown in messages: scheme, host and port only (API keys ride in URLs)."""
    uri = getattr(w3.provider, "endpoint_uri", None)
    return redact_url(str(uri)) if uri else "embedded"


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text.strip() else type(exc).__name__


@contextlib.contextmanager
def rpc(node: str, method: str) -> Iterator[None]:
    """Turn whatever web3 and requests raise while calling `method` into a one-line DeliveryError."""
    where = f"node {node}: {method}"
    try:
        yield
    except DeliveryError:
        raise
    except (
        requests.ConnectionError,
        requests.Timeout,
        w3x.ProviderConnectionError,
        w3x.RequestTimedOut,
    ) as exc:
        raise DeliveryError(f"{where}: node unreachable ({type(exc).__name__})", unavailable=True) from None
    except w3x.TimeExhausted:
        raise DeliveryError(f"{where}: no receipt before the timeout", unavailable=True) from None
    except tuple(REVERTS) as exc:
        raise DeliveryError(f"{where}: the contract refused: {_first_line(exc)}", permanent=True) from None
    except requests.RequestException as exc:
        raise DeliveryError(
            f"{where}: HTTP request failed ({type(exc).__name__})", unavailable=True
        ) from None
    except w3x.Web3RPCError as exc:
        raise DeliveryError(f"{where}: the node refused: {_first_line(exc)}", unavailable=True) from None
    except Exception as exc:
        raise NodeError(f"{where}: malformed answer ({type(exc).__name__}: {_first_line(exc)})") from None


def uint(value: Any, node: str, method: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 1 << 256:
        raise NodeError(f"node {node}: {method}: {field}: expected an unsigned integer, found {_show(value)}")
    return value


def fixed_bytes(value: Any, size: int, node: str, method: str, field: str) -> bytes:
    if isinstance(value, str) and value.startswith("0x"):
        with contextlib.suppress(ValueError):
            value = bytes.fromhex(value[2:])
    if not isinstance(value, bytes | bytearray) or (size and len(value) != size):
        want = f"{size} bytes" if size else "bytes"
        raise NodeError(f"node {node}: {method}: {field}: expected {want}, found {_show(value)}")
    return bytes(value)


def mapping(value: Any, node: str, method: str, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise NodeError(f"node {node}: {method}: {field}: expected an object, found {_show(value)}")
    return value


def address(value: Any, node: str, method: str, field: str) -> str:
    if not isinstance(value, str) or not Web3.is_address(value):
        raise NodeError(f"node {node}: {method}: {field}: expected an address, found {_show(value)}")
    return Web3.to_checksum_address(value)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"
