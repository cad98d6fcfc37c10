"""Human renderings of a report for `report show`: a summary model, and its text form.

Every string in a report is chosen by whoever made the report, so the text form escapes
control characters (no terminal escape sequences, no forged lines); loader.report.html escapes for
HTML from the same model. When a verification is given, its checks and the decoded evidence
claims are shown with their outcome; without one, nothing is labelled as verified.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from attestation import Result
from loader.report.document import Report, parse_utc

MAX_VALUE = 120
MAX_CLAIMS = 16
WIDTH = 80  # the text form fits a terminal: longer values wrap, longer labels get their own line
LABEL = 13
MOCK_BANNER = "MOCK REPORT: software evidence, no hardware; it proves nothing about a platform"
# Claims worth a person's attention first; the rest follow in name order.
_PREFERRED = (
    "tee",
    "debug",
    "tcb_status",
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "measurement",
    "host_data",
    "policy",
    "product_name",
    "vlek",
    "fmspc",
    "tdx_module_tcb_status",
    "driver",
    "vbios",
    "created",
)
_SKIPPED = {"report_data", "mock"}


@dataclass(frozen=True)
class Row:
    label: str
    value: str
    tone: str = ""  # "ok", "bad", "warn" or ""


@dataclass(frozen=True)
class Section:
    title: str
    rows: tuple[Row, ...]


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _short(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list | tuple):
        return f"<{len(value)} entries>"
    text = str(value)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def key_claims(result: Result) -> list[tuple[str, str]]:
    claims = dict(result.claims)
    names = [n for n in _PREFERRED if n in claims]
    names += sorted(n for n in claims if n not in _PREFERRED and n not in _SKIPPED)
    return [(n, _short(claims[n])) for n in names[:MAX_CLAIMS]]


def trust_of(verification: Any) -> str:
    """The state a rendering opens with: verified / NOT verified / MOCK / not appraised, or
    "not checked" when the report was only decoded (--no-verify)."""
    return "not checked" if verification is None else str(verification.trust())


def _trust(verification: Any) -> Section:
    state = trust_of(verification)
    if verification is None:
        return Section(
            "Trust", (Row("result", "not checked (--no-verify): nothing below is verified", "warn"),)
        )
    total = len(verification.checks)
    explain = {
        "verified": (
            f"verified: all {total} checks passed; platform appraised: {verification.appraisal.describe()}",
            "ok",
        ),
        "NOT verified": (f"NOT verified: {verification.reason()}", "bad"),
        "MOCK": (
            f"MOCK: all {total} checks passed, but the evidence is a software mock (--allow-mock)",
            "warn",
        ),
        "not appraised": (
            f"not appraised: all {total} checks passed (evidence authentic), but the platform was "
            "not compared with reference values",
            "warn",
        ),
    }
    text, tone = explain[state]
    rows = [Row("result", text, tone)]
    if verification.checked_at is not None:
        rows.append(Row("checked at", f"{utc_seconds(verification.checked_at)} (certificates, collateral)"))
    return Section("Trust", tuple(rows))


def utc_seconds(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _verdict(report: Report, verification: Any) -> Section:
    d = report.payload["decision"]
    verdict = str(d["verdict"]).upper()
    trusted = verification is not None and verification.ok
    tone = "bad" if d["verdict"] != "run" else "ok" if trusted else "warn"
    claimed = "" if trusted else " (as the report claims; not verified)"
    rows = [Row("verdict", verdict + claimed, tone)]
    rows += [Row("reason", str(r), "bad") for r in d["reasons"]]
    return Section("Decision", tuple(rows))


def _evidence_type(entry: object) -> str:
    return str(entry.get("type")) if isinstance(entry, dict) else "(malformed)"


def _about(report: Report) -> Section:
    p = report.payload
    signer = report.chain[0].subject.rfc4514_string() if report.chain else "?"
    return Section(
        "Report",
        (
            Row("report", report.digest),
            Row("job", f"{p['job']['id'] or '-'} (order {p['job']['order'] or '-'})"),
            Row("loader", f"{p['loader']['name']} {p['loader']['version']}"),
            Row(
                "tee",
                f"{p['tee']}; evidence: {', '.join(_evidence_type(e) for e in p['evidence']) or 'none'}",
            ),
            Row("policy", p["policy"]["digest"] or "(not loaded)"),
            *_signers(p["policy"]),
            Row("signed", f"{p['timestamps']['finished']} by {signer}"),
        ),
    )


def _signers(policy: dict[str, Any]) -> list[Row]:
    signers = policy.get("signers") or []
    if not signers:
        return []
    required = ", ".join(str(s["name"]) for s in signers if s["required"])
    return [Row("signers", f"{len(policy['signatures'])} signature(s); required: {required}")]


def _verification(verification: Any) -> Section | None:
    if verification is None:
        return None
    rows = [Row(name, detail, "ok" if ok else "bad") for name, ok, detail in verification.checks]
    return Section("Checks", tuple(rows))


def _evidence(verification: Any) -> Section | None:
    if verification is None or not verification.evidence:
        return None
    rows: list[Row] = []
    for i, res in enumerate(verification.evidence):
        state = "verified" if res.ok else f"NOT verified: {res.reason()}"
        kind = f"{res.type} (MOCK, not hardware)" if res.is_mock else res.type
        rows.append(Row(f"evidence[{i}]", f"{kind}: {state}", "ok" if res.ok else "bad"))
        if res.tcb_status is not None:
            rows.append(Row("tcb", res.tcb_status, "ok" if res.tcb_status == "UpToDate" else "warn"))
        if res.advisories:
            rows.append(Row("advisories", ", ".join(res.advisories), "warn"))
        rows += [Row(name, value) for name, value in key_claims(res)]
    return Section("Evidence", tuple(rows))


def _approval(item: dict[str, Any]) -> tuple[str, str]:
    if item["expected"] is None:
        return "not listed", "bad"
    return ("approved", "ok") if item["expected"] == item["digest"] else ("NOT APPROVED", "bad")


def _inputs(report: Report) -> Section:
    rows = []
    for i in report.payload["inputs"]:
        label = i["role"] if i["role"] != "dataset" else f"dataset {i['name']}"
        state, tone = _approval(i)
        if i.get("encrypted") and not i["digest"]:
            state, tone = "encrypted, not decrypted", "warn"
        moved = ", moved into staging" if i.get("staging") == "move" else ""
        detail = f"{i['kind']}, {size_text(i['size'])}, {i['files']} file(s), {i['ms']} ms{moved}, {state}"
        rows.append(Row(label, f"{i['digest'] or '-'}  {detail}", tone))
        if i.get("encrypted"):
            rows.append(Row("ciphertext", str(i["encrypted"]["digest"])))
    return Section("Inputs", tuple(rows) or (Row("inputs", "none measured", "bad"),))


def _execution(report: Report) -> list[Row]:
    """How the loader ran (or would have run) the engine: what the approved list consented to."""
    run = report.payload["run"]
    rows = [
        Row("runtime", f"{run['runtime']}, network {run['network']}, timeout {run['timeout_ms'] / 1000:g} s"),
        Row("command", json.dumps(run["command"])),
    ]
    rows += [Row("env", f"{k}={v}", "warn") for k, v in sorted(run["env"].items())]
    rows.append(Row("recipient", run["recipient"] or "none: output in the clear"))
    return rows


def _workload(report: Report) -> Section:
    """parse_report checks the workload only as a map: every field is checked here."""
    wl = report.payload["workload"]
    if wl is None:
        return Section("Workload", (Row("workload", "not run"), *_execution(report)))
    timed_out, code, ms, error = (wl.get(k) for k in ("timed_out", "exit_code", "ms", "error"))
    if not isinstance(timed_out, bool) or not isinstance(ms, int) or isinstance(ms, bool):
        return Section("Workload", (Row("workload", "malformed workload record", "bad"),))
    state = "timed out" if timed_out else f"exit {code}"
    ok = not timed_out and code == 0 and not error
    rows = [Row("workload", f"{state} after {ms / 1000:.2f} s", "ok" if ok else "bad"), *_execution(report)]
    if error:
        rows.append(Row("error", str(error), "bad"))
    out = wl.get("output")
    if isinstance(out, dict):
        sealed = out.get("sealed")
        to = f", sealed to {sealed.get('recipient')}" if isinstance(sealed, dict) else ""
        rows.append(Row("output", f"{out.get('digest')} ({out.get('files')} files, {out.get('size')} B{to})"))
    rows += _containment_rows(report.payload.get("containment"))
    return Section("Workload", tuple(rows))


def _containment_rows(record: Any) -> list[Row]:
    """How the engine was contained (docs/containment.md); checked by parse_report's schema."""
    if not isinstance(record, dict):
        return []
    if record["isolation"] == "none":
        return [Row("containment", "NONE: the engine ran as the loader, uncontained", "bad")]
    who = f"uid {record['uid']}" + (" in a user namespace" if record["user_namespace"] else "")
    spaces = ", ".join(record["namespaces"])
    devices = ", ".join(record["devices"]) or "none"
    rows = [
        Row("containment", f"{record['isolation']} ({record['runner']}): {who}; namespaces {spaces}", "ok")
    ]
    rows.append(Row("network", f"{record['network']}; devices {devices}"))
    tone = "warn" if record["boundary"].startswith("SEV-SNP") else ""
    return [*rows, Row("boundary", record["boundary"], tone)]


def _seconds(start: str, end: str) -> str:
    try:
        delta = (parse_utc(end) - parse_utc(start)) / dt.timedelta(seconds=1)
    except ValueError:
        return "?"
    return f"{delta:.3f} s"


def _wipe_text(wipe: dict[str, Any]) -> str:
    counts = f"{wipe['files']} file(s), {wipe['overwritten']} overwritten, {wipe['decrypted']} decrypted"
    if "method" not in wipe:
        return counts
    how = f"by {wipe['method']}" + (f" on {wipe['medium']}" if "medium" in wipe else "")
    chosen = f" (configured {wipe['requested']})" if "requested" in wipe else ""
    return f"{counts}, {how}{chosen}"


def _timings(report: Report) -> Section:
    p = report.payload
    t, h = p["timestamps"], p["hashing"]
    rows = [
        Row("started", t["started"]),
        Row("measure", f"{_seconds(t['started'], t['measured'])} step: attest, certify, policy, hash"),
        Row("decide", f"{_seconds(t['measured'], t['decided'])} step: measured to decided"),
        Row("run", f"{_seconds(t['decided'], t['finished'])} step: workload, wipe, sign"),
        Row("total", f"{_seconds(t['started'], t['finished'])} started to finished (sum of the steps)"),
        Row("hashing", f"{size_text(h['bytes'])} in {h['ms'] / 1000:.2f} s ({size_text(h['rate'])}/s)"),
    ]
    wipe = p["wipe"]
    if isinstance(wipe, dict):
        rows.append(Row("wiped", _wipe_text(wipe)))
    rows.append(Row("events", f"{len(p['events'])} runtime-register extension(s)"))
    return Section("Timings", tuple(rows))


def summarize(report: Report, verification: Any = None) -> list[Section]:
    """The sections a person reads, most important first: what the report is worth (trust),
    then what it says (decision), then the details."""
    sections = [_trust(verification), _verdict(report, verification), _about(report)]
    sections += [s for s in (_verification(verification), _evidence(verification)) if s is not None]
    return [*sections, _inputs(report), _workload(report), _timings(report)]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def plain(text: str) -> str:
    """Printable on a terminal: control and bidi-override characters shown as escapes."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _row_lines(label: str, value: str) -> list[str]:
    """One row within WIDTH columns: the value wraps under itself (long tokens such as digests
    are cut), and a label too long for its column gets a line of its own."""
    indent = " " * (2 + LABEL + 1)
    if any(len(token) > WIDTH - len(indent) for token in value.split()):
        indent = " " * 4  # a digest: whole on its own line rather than cut in two
    wrapped = textwrap.wrap(value, WIDTH - len(indent), break_on_hyphens=False) or [""]
    if len(label) > LABEL or len(indent) == 4:
        head = [f"  {label[: WIDTH - 2]}"]
        return head + [indent + line for line in wrapped]
    first = f"  {label:<{LABEL}} {wrapped[0]}"
    return [first] + [indent + line for line in wrapped[1:]]


def render_text(report: Report, verification: Any = None) -> str:
    lines = []
    if verification is not None and verification.is_mock:
        lines += ["*" * WIDTH, *("* " + x for x in textwrap.wrap(MOCK_BANNER, WIDTH - 2)), "*" * WIDTH]
    for section in summarize(report, verification):
        lines.append(f"{section.title}:")
        for row in section.rows:
            lines += _row_lines(plain(row.label), plain(row.value))
    return "\n".join(lines) + "\n"
