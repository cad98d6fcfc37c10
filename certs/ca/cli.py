"""`trusted-loader ca init|serve`: create a CA directory, serve it over HTTP.

The lead's loader/cli/commands.py calls `add_parser(subparsers)`; each subcommand stores its handler in
`func`, which takes the parsed arguments and returns an exit code (0 ok, 1 refused/failed,
2 usage or I/O error). `python -m certs.ca.cli ca ...` runs the same code without the loader.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from certs.errors import CertsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ca = subparsers.add_parser("ca", help="the attestation-based certificate authority")
    sub = ca.add_subparsers(dest="ca_command", required=True)

    init = sub.add_parser("init", help="create a CA: DIR/ca.pem, DIR/ca-key.pem (0600), DIR/policy.toml")
    init.add_argument("--dir", type=Path, required=True, help="directory to create the CA in")
    init.add_argument(
        "--allow-mock", action="store_true", help="accept software mock evidence (tests and demos only)"
    )
    init.add_argument("--name", default="trusted-loader attestation CA", help="CA common name")
    init.add_argument("--validity-days", type=int, default=3650, help="CA certificate lifetime")
    init.set_defaults(func=cmd_init)

    serve = sub.add_parser("serve", help="serve the CA over HTTP (aiohttp)")
    serve.add_argument("--dir", type=Path, required=True, help="a directory made by `ca init`")
    serve.add_argument("--listen", default="127.0.0.1:8450", help="HOST:PORT (port 0 picks a free one)")
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="private key for --tls-cert (PEM)")
    serve.add_argument(
        "--replica",
        type=int,
        default=0,
        help="this replica's number, 0..65535: it redeems only the nonces it issued (docs/ca-abuse.md)",
    )
    serve.add_argument(
        "--rate", type=float, default=5.0, help="enrollments per second per client address (default 5)"
    )
    serve.add_argument("--burst", type=float, default=20.0, help="enrollment burst per client (default 20)")
    serve.add_argument(
        "--log-format", choices=["auto", "json", "text"], default="auto", help="auto: JSON unless a terminal"
    )
    serve.set_defaults(func=cmd_serve)
    return ca


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen: expected HOST:PORT, found {text!r}")
    return host, int(port)


def cmd_init(args: argparse.Namespace) -> int:
    from certs.ca.authority import CA_KEY, POLICY, init_ca_dir

    if not 1 <= args.validity_days <= 36500:
        print(f"error: --validity-days: expected 1..36500, found {args.validity_days}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pem = init_ca_dir(
            args.dir, allow_mock=args.allow_mock, common_name=args.name, validity_days=args.validity_days
        )
    except CertsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    mode = "accepts mock evidence" if args.allow_mock else "refuses mock evidence"
    print(f"CA created: {pem} (key {args.dir / CA_KEY}, mode 0600); {mode}", file=sys.stderr)
    if not args.allow_mock:
        print(
            f"the CA does not start until {args.dir / POLICY} pins reference values "
            "([attestation] reference = FILE, docs/appraisal.md) or says any_image = true",
            file=sys.stderr,
        )
    print(
        f"edit {args.dir / POLICY} to pin your images, then: trusted-loader ca serve --dir {args.dir}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_USAGE
    try:
        from certs.ca import service
    except ImportError as exc:
        hint = "pip install 'cvm-trusted-loader[ca]'"
        print(f"error: `ca serve` needs aiohttp: {hint} ({exc})", file=sys.stderr)
        return EXIT_USAGE
    from certs.ca.authority import CertificateAuthority
    from certs.ca.ratelimit import Rate

    try:
        limits = service.Limits(enroll=Rate(per_second=args.rate, burst=args.burst))
    except ValueError as exc:
        print(f"error: --rate/--burst: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup = getattr(args, "setup_logging", None)  # the loader's format when run as trusted-loader
    if setup is not None:
        setup(args.log_format)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        ca = CertificateAuthority.load(args.dir, replica=args.replica)
        ssl_context = _tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    except (CertsError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in ca.policy.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    logging.getLogger("certs.ca").info("appraisal: %s", ca.policy.appraisal.describe())

    def ready(url: str) -> None:
        print(f"trusted-loader CA listening on {url}", file=sys.stderr, flush=True)

    try:
        service.serve_forever(ca, host, port, ssl_context=ssl_context, limits=limits, ready=ready)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _tls(cert: Path, key: Path) -> Any:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv: list[str], prog: str = "trusted-loader") -> int:
    parser = argparse.ArgumentParser(prog=prog)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], "python -m certs.ca.cli"))
