"""Command-line pieces for publishing reports on an EVM chain (issue 7).

    trusted-loader chain deploy --rpc-url URL --account-key-file FILE         prints the address
    trusted-loader publish --spool DIR --rpc-url URL --contract ADDR --account-key-file FILE
    trusted-loader report fetch --rpc-url URL --contract ADDR --digest sha256:<hex> -o FILE
    run / demo: --rpc-url URL --contract ADDR --account-key-file FILE [--publish-timeout S]

`run` and `demo` store the report in the spool first, then publish it; when that fails within the
timeout they exit 6 (EXIT_NOT_PUBLISHED: report stored, not published) unless the job itself
already failed with its own code, and `trusted-loader publish` delivers it later. `publish` exits
0 when everything in the spool is delivered (also when it already was), 6 when some is pending,
2 (node error) when some is pending because the node answered something malformed or false.
`report fetch` exits 1 when the contract says the digest was never published, 2 on a node error
(unreachable, malformed answer, or a log that does not hash to the digest). docs/publishing.md.

This module imports web3 only when a chain is actually used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loader.boot.publish_settings import EvmSettings, PublishSettings, override
from loader.errors import EXIT_OK, EXIT_REJECTED, ConfigError, LoaderError, PublishError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography import x509

    from loader.boot.config import LoaderConfig
    from loader.publish.deliver import Outcome
    from loader.publish.sinks import Sink

log = logging.getLogger("trusted-loader")

EXIT_NOT_PUBLISHED = 6
EXIT_NODE_ERROR = 2
DEFAULT_DEPLOY_TIMEOUT = 120.0


def _evm():
    import importlib.util

    if importlib.util.find_spec("web3") is None:
        raise ConfigError(
            "publishing to a chain needs web3, which is not installed: "
            "pip install 'cvm-trusted-loader[chain]'"
        )
    try:
        from loader.publish import evm
    except ImportError as exc:
        raise ConfigError(
            f"publishing to a chain: web3 is installed but cannot be imported ({exc.name} is missing): "
            "reinstall with pip install 'cvm-trusted-loader[chain]'"
        ) from exc
    return evm


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, found {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, found {text}")
    return value


def _chain_options(parser: argparse.ArgumentParser, *, contract: bool, key: bool, required: bool) -> None:
    parser.add_argument("--rpc-url", required=required, help="JSON-RPC endpoint (http or https)")
    if contract:
        parser.add_argument("--contract", required=required, help="ReportRegistry address (0x...)")
    if key:
        parser.add_argument(
            "--account-key-file",
            type=Path,
            required=required,
            help="hex private key of the operator, mode 0600",
        )
    parser.add_argument("--chain-id", type=int, help="refuse a node on any other chain")


def _count(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low}..{high}, found {value}")
        return value

    return parse


def _delivery_options(parser: Any) -> None:
    parser.add_argument(
        "--confirmations",
        type=_count(1, 10_000),
        help="blocks (its own included) that must stand on a report's log (default 1)",
    )
    parser.add_argument(
        "--replace-after", type=_seconds, help="seconds before a stuck transaction is replaced (default 30)"
    )
    parser.add_argument(
        "--max-replacements", type=_count(0, 10), help="replacements per transaction at most (default 3)"
    )


def add_publish_options(parser: argparse.ArgumentParser) -> None:
    """The chain flags of `run` and `demo` (they override [publish.evm] in the config)."""
    group = parser.add_argument_group("publishing (override [publish.evm] in the config)")
    _chain_options(group, contract=True, key=True, required=False)  # type: ignore[arg-type]
    group.add_argument("--publish-timeout", type=_seconds, help="seconds to spend publishing (default 60)")
    group.add_argument(
        "--confirmations",
        type=_count(1, 10_000),
        help="blocks (its own included) that must stand on a report's log (default 1)",
    )


def add_commands(sub: Any, report_sub: Any) -> None:
    chain = sub.add_parser("chain", help="manage the ReportRegistry contract").add_subparsers(
        dest="chain_command", required=True
    )
    deploy = chain.add_parser("deploy", help="deploy a ReportRegistry; prints its address")
    _chain_options(deploy, contract=False, key=True, required=True)
    deploy.add_argument(
        "--timeout", type=_seconds, default=DEFAULT_DEPLOY_TIMEOUT, help="seconds to wait for the deployment"
    )
    deploy.set_defaults(func=cmd_chain_deploy)

    publish = sub.add_parser("publish", help="deliver the spool's pending reports to a chain")
    publish.add_argument("--spool", type=Path, required=True, help="the loader's spool directory")
    _chain_options(publish, contract=True, key=True, required=True)
    publish.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds to keep retrying (default 60)"
    )
    publish.add_argument(
        "--respect-backoff", action="store_true", help="skip reports whose persisted retry time is not due"
    )
    publish.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _delivery_options(publish)
    publish.set_defaults(func=cmd_publish)

    fetch = report_sub.add_parser("fetch", help="fetch a published report by its digest")
    _chain_options(fetch, contract=True, key=False, required=True)
    fetch.add_argument(
        "--digest", required=True, help="sha256:<hex>, as `trusted-loader digest REPORT` prints"
    )
    fetch.add_argument("-o", "--output", type=Path, required=True, help="where to write the report")
    fetch.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds to wait for the node (default 30)"
    )
    fetch.set_defaults(func=cmd_report_fetch)


def make_sinks(settings: PublishSettings) -> list[Sink]:
    """Build the configured sinks (reading the key file) before the job runs: fail early."""
    from loader.publish.keyfile import read_account_key
    from loader.publish.sinks import FileSink

    sinks: list[Sink] = []
    if settings.file_dir is not None:
        sinks.append(FileSink(settings.file_dir))
    if settings.evm is not None:
        evm = _evm()
        assert settings.evm.account_key_file is not None
        key = read_account_key(settings.evm.account_key_file)
        sinks.append(_evm_sink(evm, settings.evm, key))
    return sinks


def _evm_sink(evm: Any, cfg: EvmSettings, key: Any) -> Sink:
    try:
        replacement = evm.Replacement(replace_after=cfg.replace_after, max_replacements=cfg.max_replacements)
    except ValueError as exc:
        raise ConfigError(f"publish.evm: {exc}") from None
    return evm.EvmSink(
        cfg.rpc_url,
        cfg.contract,
        key,
        chain_id=cfg.chain_id,
        confirmations=cfg.confirmations,
        replacement=replacement,
    )


def prepare(cfg: LoaderConfig, args: argparse.Namespace) -> tuple[PublishSettings, list[Sink]]:
    """The publish settings with the command line's overrides, validated as `config check`
    validates them (loader.boot.preflight), then the sinks: all before the job attests."""
    from loader.boot.preflight import preflight

    settings = override(cfg.publish, args)
    for warning in preflight(cfg, settings):
        log.warning("%s", warning)
    return settings, make_sinks(settings) if settings.enabled else []


def publish_report(spool_dir: Path, report: bytes, sinks: list[Sink], timeout: float) -> list[Outcome]:
    """Deliver one spooled report to every sink, then older pending ones that are due."""
    import hashlib

    from loader.publish.deliver import Delivery
    from loader.publish.ledger import Ledger

    ledger = Ledger(spool_dir)
    start = time.monotonic()
    outcomes = Delivery(ledger, sinks, only={hashlib.sha256(report).hexdigest()}).run(timeout)
    left = timeout - (time.monotonic() - start)
    if all(o.delivered for o in outcomes) and left > 1:
        backlog = Delivery(ledger, sinks, respect_schedule=True).run(left)
        waiting = [o for o in backlog if not o.delivered]
        if waiting:
            log.warning("%d older report(s) still pending in %s", len(waiting), spool_dir)
    return outcomes


def report_outcomes(outcomes: list[Outcome], spool_dir: Path) -> bool:
    for o in outcomes:
        if o.delivered:
            print(f"published {o.digest} to {o.sink}: {o.detail}", file=sys.stderr)
        else:
            print(f"NOT PUBLISHED {o.digest} to {o.sink}: {o.detail}", file=sys.stderr)
    ok = all(o.delivered for o in outcomes)
    if not ok:
        print(
            f"the report stays in {spool_dir}; deliver it later with: "
            f"trusted-loader publish --spool {spool_dir} ...",
            file=sys.stderr,
        )
    return ok


def after_boot(
    spool_dir: Path, report: bytes, job_code: int, settings: PublishSettings, sinks: list[Sink]
) -> int:
    """Publish after `run`: the job's exit code, or 6 when it succeeded but publishing did not."""
    if not sinks:
        return job_code
    try:
        outcomes = publish_report(spool_dir, report, sinks, settings.timeout)
        ok = report_outcomes(outcomes, spool_dir)
    except PublishError as exc:  # e.g. the spool lock: the report is stored all the same
        print(f"NOT PUBLISHED: {exc}; the report stays in {spool_dir}", file=sys.stderr)
        ok = False
    finally:
        for sink in sinks:
            sink.close()
    if ok or job_code != EXIT_OK:
        return job_code
    return EXIT_NOT_PUBLISHED


def cmd_chain_deploy(args: argparse.Namespace) -> int:
    from loader.publish.keyfile import read_account_key

    _setup_logging()
    evm = _evm()
    key = read_account_key(args.account_key_file)
    w3 = evm.connect(args.rpc_url, min(args.timeout, evm.MAX_RPC_TIMEOUT))
    _check_chain(evm.chain_id_of(w3), args.chain_id)
    address, tx_hash = evm.deploy(w3, key, deadline=time.monotonic() + args.timeout)
    print(f"deployed ReportRegistry in transaction {tx_hash}", file=sys.stderr)
    print(address)
    return EXIT_OK


def _check_chain(actual: int, expected: int | None) -> None:
    if expected is not None and actual != expected:
        raise PublishError(f"--chain-id: expected {expected}, the node is on chain {actual}")


def cmd_publish(args: argparse.Namespace) -> int:
    from loader.publish.deliver import Delivery
    from loader.publish.ledger import Ledger

    _setup_logging()
    if not args.spool.is_dir():
        raise LoaderError(f"{args.spool}: --spool is not a directory")
    evm = _evm()
    from loader.publish.keyfile import read_account_key

    cfg = EvmSettings(args.rpc_url, args.contract, args.account_key_file, args.chain_id)
    chosen = {
        name: getattr(args, name)
        for name in ("confirmations", "replace_after", "max_replacements")
        if getattr(args, name) is not None
    }
    sink = _evm_sink(evm, replace(cfg, **chosen), read_account_key(args.account_key_file))
    delivery = Delivery(Ledger(args.spool), [sink], respect_schedule=args.respect_backoff)
    outcomes = delivery.run(args.timeout)
    sink.close()
    ok = all(o.delivered for o in outcomes)
    if args.json:
        doc = {
            "ok": ok,
            "reports": [
                {
                    "digest": o.digest,
                    "sink": o.sink,
                    "delivered": o.delivered,
                    "node_error": o.node_error,
                    "detail": o.detail,
                    "receipt": o.receipt,
                }
                for o in outcomes
            ],
        }
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    for o in outcomes:
        state = "delivered" if o.delivered else "PENDING"
        print(f"{state} {o.digest}: {o.detail}", file=sys.stderr)
    pending = sum(not o.delivered for o in outcomes)
    print(f"{len(outcomes) - pending} delivered, {pending} pending in {args.spool}", file=sys.stderr)
    if ok:
        return EXIT_OK
    if any(o.node_error for o in outcomes):
        print("node error: a node answered something malformed or false; see above", file=sys.stderr)
        return EXIT_NODE_ERROR
    return EXIT_NOT_PUBLISHED


def cmd_report_fetch(args: argparse.Namespace) -> int:
    from loader.publish.spool import atomic_write

    _setup_logging()
    evm = _evm()
    try:
        digest = evm.to_bytes32(args.digest)
    except ValueError as exc:
        raise LoaderError(f"--digest: {exc}") from None
    w3 = evm.connect(args.rpc_url, min(args.timeout, evm.MAX_RPC_TIMEOUT))
    registry = evm.Registry(w3, args.contract)
    try:
        _check_chain(registry.check(), args.chain_id)
        found = registry.fetch(digest)
    except evm.DeliveryError as exc:  # unreachable, malformed or false answers: never "not published"
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NODE_ERROR
    if found is None:
        print(f"error: {args.digest} was never published to {registry.address}", file=sys.stderr)
        return EXIT_REJECTED
    atomic_write(args.output, found.report)
    print(
        f"fetched {args.digest} ({len(found.report)} bytes) "
        f"from transaction {found.tx_hash} in block {found.block}",
        file=sys.stderr,
    )
    return EXIT_OK


def demo_chain(
    workdir: Path,
    report: bytes,
    spool_dir: Path,
    code: int,
    args: argparse.Namespace,
    ca: Sequence[x509.Certificate] = (),
) -> int:
    """The demo's chain step: the given chain, else an embedded EVM; publish, fetch back, verify."""
    settings = override(PublishSettings(), args)
    if settings.evm is not None:
        return after_boot(spool_dir, report, code, settings, make_sinks(settings))
    import hashlib

    from loader.publish import embedded
    from loader.publish.deliver import Delivery
    from loader.publish.ledger import Ledger
    from loader.report.verify import verify_report

    try:
        chain = embedded.start()
    except PublishError as exc:
        sys.stdout.write(f"  chain     skipped: {exc}\n")
        return code
    evm = _evm()
    start = time.monotonic()
    address, _ = evm.deploy(chain.w3, chain.key, deadline=start + 60)
    sink = evm.EvmSink("embedded", address, chain.key, w3=chain.w3)
    digest = hashlib.sha256(report).hexdigest()
    outcomes = Delivery(Ledger(spool_dir), [sink], only={digest}).run(60)
    if not all(o.delivered for o in outcomes):
        report_outcomes(outcomes, spool_dir)
        return EXIT_NOT_PUBLISHED if code == EXIT_OK else code
    found = evm.Registry(chain.w3, address).fetch(bytes.fromhex(digest))
    fetched = workdir / "report.fetched.cbor"
    assert found is not None
    fetched.write_bytes(found.report)
    from loader.cli.demo import appraisal

    check = verify_report(found.report, ca=ca, allow_mock=True, appraisal=appraisal(workdir))
    same = "byte-identical" if found.report == report else "DIFFERENT"
    sys.stdout.write(
        f"  chain     embedded EVM (eth-tester, chain id {chain.chain_id}), ReportRegistry at {address}\n"
        f"  publish   tx {found.tx_hash} in block {found.block} ({time.monotonic() - start:.2f} s)\n"
        f"  fetch     {fetched}: {same}, verify {'OK' if check.ok else 'FAILED: ' + check.reason()}\n"
    )
    if found.report != report or not check.ok:
        return EXIT_REJECTED
    return code


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="trusted-loader: %(message)s", stream=sys.stderr)
