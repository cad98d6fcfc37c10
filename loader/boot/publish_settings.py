"""The `[publish]` section of the loader configuration, and the CLI flags that override it.

[publish.evm]
rpc_url = "http://127.0.0.1:8545"
contract = "0x..."                 # a ReportRegistry (see `trusted-loader chain deploy`)
account_key_file = "operator.key"  # hex private key, mode 0600 (relative to this file)
chain_id = 204                     # optional: refuse a node on another chain
timeout = 60                       # seconds `run` spends publishing before exit code 6
confirmations = 1                  # blocks (its own included) on the report's log (docs/publishing.md)
replace_after = 30                 # seconds before a stuck transaction is replaced (same nonce, +25 % fees)
max_replacements = 3               # at most this many replacements per transaction

[publish.file]
dir = "/var/lib/trusted-loader/outbox"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loader.boot.config import _Section

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 86400.0


@dataclass(frozen=True)
class EvmSettings:
    rpc_url: str
    contract: str
    account_key_file: Path | None
    chain_id: int | None = None
    confirmations: int = 1
    replace_after: float = 30.0
    max_replacements: int = 3


@dataclass(frozen=True)
class PublishSettings:
    evm: EvmSettings | None = None
    file_dir: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def enabled(self) -> bool:
        return self.evm is not None or self.file_dir is not None


def _key_file(section: _Section, base: Path) -> Path:
    """The operator key's path (TL_ACCOUNT_KEY_FILE overrides it; see loader/boot/secretfiles.py)."""
    path = section.secret_path("account_key_file", base)
    if path is None:
        raise section.error("account_key_file", "missing (required with [publish.evm])")
    return path


def _bounded(section: _Section, key: str, kind: Any, low: float, high: float, default: Any) -> Any:
    value = section.get(key, kind, default)
    if isinstance(value, bool) or not low <= value <= high:
        raise section.error(key, f"expected a number from {low} to {high}, found {value}")
    return value


def parse_publish(section: _Section, base: Path) -> PublishSettings:
    evm_section = section.table("evm")
    evm, timeout = None, DEFAULT_TIMEOUT
    if evm_section.data:
        evm = EvmSettings(
            rpc_url=evm_section.get("rpc_url", str),
            contract=evm_section.get("contract", str),
            account_key_file=_key_file(evm_section, base),
            chain_id=evm_section.get("chain_id", int, None),
            confirmations=_bounded(evm_section, "confirmations", int, 1, 10_000, 1),
            replace_after=float(_bounded(evm_section, "replace_after", (int, float), 1, 3600, 30)),
            max_replacements=_bounded(evm_section, "max_replacements", int, 0, 10, 3),
        )
        timeout = evm_section.get("timeout", (int, float), DEFAULT_TIMEOUT)
        if not 0 < timeout <= MAX_TIMEOUT:
            raise evm_section.error(
                "timeout", f"expected seconds between 0 and {MAX_TIMEOUT:.0f}, found {timeout}"
            )
    evm_section.finish()
    file_section = section.table("file")
    file_dir = file_section.path("dir", base) if file_section.data else None
    file_section.finish()
    section.finish()
    return PublishSettings(evm=evm, file_dir=file_dir, timeout=float(timeout))


def override(settings: PublishSettings, args: Any) -> PublishSettings:
    """Apply --rpc-url/--contract/--account-key-file/--chain-id/--publish-timeout over the config."""
    from dataclasses import replace

    evm = settings.evm
    if args.rpc_url or args.contract or args.account_key_file or args.chain_id is not None:
        rpc_url = args.rpc_url or (evm.rpc_url if evm else None)
        contract = args.contract or (evm.contract if evm else None)
        key_file = args.account_key_file or (evm.account_key_file if evm else None)
        chain_id = args.chain_id if args.chain_id is not None else (evm.chain_id if evm else None)
        if not rpc_url or not contract or key_file is None:
            from loader.errors import ConfigError

            raise ConfigError("publishing to a chain needs --rpc-url, --contract and --account-key-file")
        base = evm or EvmSettings(rpc_url, contract, key_file)
        evm = replace(base, rpc_url=rpc_url, contract=contract, account_key_file=key_file, chain_id=chain_id)
    if evm is not None and getattr(args, "confirmations", None) is not None:
        evm = replace(evm, confirmations=args.confirmations)
    timeout = args.publish_timeout if args.publish_timeout is not None else settings.timeout
    return PublishSettings(evm=evm, file_dir=settings.file_dir, timeout=timeout)
