"""`report show`: the readable summary, the HTML page, and hostile report fields."""

from __future__ import annotations

import copy
import html
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.boot.config import load_config
from loader.boot.keys import EphemeralKey
from loader.boot.sequence import boot
from loader.errors import ReportError
from loader.report.document import Report, parse_report, sign_report
from loader.report.html import render_html
from loader.report.show import plain, render_text
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.ops_helpers import REPO, loader_env, make_job

TEMPLATE_TAGS = {
    "html",
    "head",
    "meta",
    "wbr",
    "title",
    "style",
    "body",
    "h1",
    "span",
    "p",
    "h2",
    "table",
    "tr",
    "td",
    "footer",
    "code",
}
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'


@pytest.fixture(scope="module")
def report_raw(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    job = make_job(tmp_path_factory.mktemp("show") / "job", leaky=False)
    outcome = boot(load_config(job.config))
    assert outcome.exit_code == 0
    return outcome.report


def _resigned(raw: bytes, edit: Any) -> bytes:
    """The report with its payload edited by `edit`, signed again by a throwaway key."""
    report = parse_report(raw)
    payload = copy.deepcopy(report.payload)
    edit(payload)
    return sign_report(payload, x5chain=list(report.envelope.x5chain), sign=EphemeralKey().sign_raw)


def _hostile(payload: dict[str, Any]) -> None:
    payload["job"]["id"] = HOSTILE
    payload["inputs"][1]["name"] = HOSTILE
    payload["decision"]["reasons"] = [HOSTILE, "dataset \x1b[2Jcleared\nFAKE LINE"]
    payload["decision"]["verdict"] = "abort"
    payload["workload"]["error"] = HOSTILE
    payload["loader"]["version"] = HOSTILE


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse_html(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


def test_text_summary_has_verdict_inputs_evidence_claims_and_timings(report_raw: bytes) -> None:
    report = parse_report(report_raw)
    text = render_text(report, verify_report(report_raw, allow_mock=True, appraisal=MOCK))
    lines = text.splitlines()
    assert "MOCK REPORT" in lines[1]  # a mock report carries its banner first
    assert lines[4:6] == ["Trust:", lines[5]] and lines[5].startswith("  result        MOCK: all ")
    assert "  verdict       RUN\n" in text
    assert text.index("Trust:") < text.index("Decision:")
    assert "mock (MOCK, not hardware): verified" in text
    mrtd = lines[lines.index("  mrtd") + 1]
    assert len(mrtd.split()[0]) == 96 - 20  # a 96-digit value wraps under its label
    for item in report.payload["inputs"]:
        assert f"    {item['digest']}\n" in text  # a digest is never cut in two
    assert text.count(", approved") == len(report.payload["inputs"])
    for label in ("Timings:", "  measure ", "  decide        0.", " step: measured to decided", "  total "):
        assert label in text
    assert max(len(line) for line in lines) <= 80


def test_text_summary_without_mock_allowance_says_not_verified(report_raw: bytes) -> None:
    text = render_text(parse_report(report_raw), verify_report(report_raw))
    assert "  result        NOT verified: evidence[0]: mock" in text
    assert "  verdict       RUN (as the report claims; not verified)" in text
    assert "--allow-mock" in text and "allow_mock to" not in text
    unchecked = render_text(parse_report(report_raw))
    assert unchecked.startswith("Trust:\n  result        not checked (--no-verify)")


def test_text_escapes_terminal_control_characters(report_raw: bytes) -> None:
    text = render_text(parse_report(_resigned(report_raw, _hostile)))
    assert "\x1b" not in text
    assert "dataset \\u001b[2Jcleared\\u000aFAKE LINE" in text
    assert all(not line.startswith("FAKE") for line in text.splitlines())


def test_html_escapes_hostile_report_fields(report_raw: bytes) -> None:
    forged = _resigned(report_raw, _hostile)
    page = render_html(parse_report(forged), verify_report(forged, allow_mock=True, appraisal=MOCK))
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    parsed = _parse_html(page)
    assert parsed.tags <= TEMPLATE_TAGS
    assert not any(name.startswith("on") for name, _ in parsed.attrs)
    assert HOSTILE in "".join(parsed.text)
    assert "signature" in page  # the forged signature is reported ...
    assert "NOT verified: signature" in "".join(parsed.text)  # ... as a failed verification
    assert '<span class="trust abort">NOT verified</span>' in page
    assert '<span class="verdict abort">ABORT</span>' in page


def test_html_opens_with_trust_banner_and_breaks_only_at_sensible_points(report_raw: bytes) -> None:
    page = render_html(parse_report(report_raw), verify_report(report_raw, allow_mock=True))
    body = page[page.index("<body>") :]
    assert body.index('class="banner"') < body.index('class="trust') < body.index('class="verdict')
    assert "MOCK REPORT" in body and "break-all" not in page
    digest = parse_report(report_raw).digest
    assert f"sha256:<wbr>{digest[7:23]}<wbr>{digest[23:39]}<wbr>" in body
    assert "al<wbr>low" not in body and "allow<wbr>" not in body
    unverified = render_html(parse_report(report_raw), verify_report(report_raw))
    assert '<span class="verdict unverified">RUN</span>' in unverified  # never a green RUN unverified


def test_html_forbids_scripts_by_policy(report_raw: bytes) -> None:
    page = render_html(parse_report(report_raw))
    csp = next(v for n, v in _parse_html(page).attrs if n == "content" and v and "default-src" in v)
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "http://" not in page and "https://" not in page


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_property_any_reason_renders_as_text_only(report_raw: bytes, reason: str) -> None:
    report = parse_report(report_raw)
    payload = copy.deepcopy(report.payload)
    payload["decision"]["reasons"] = [reason]
    forged = Report(report.raw, report.envelope, payload, report.chain)
    parsed = _parse_html(render_html(forged))
    assert parsed.tags <= TEMPLATE_TAGS
    assert plain(reason) in "".join(parsed.text)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", "report", "show", *args],
        cwd=REPO,
        env=loader_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_html_to_file_and_json(report_raw: bytes, tmp_path: Path) -> None:
    path = tmp_path / "r.cbor"
    path.write_bytes(report_raw)
    out = tmp_path / "r.html"
    done = _cli(str(path), "--html", "-o", str(out), "--allow-mock", "--any-image")
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "MOCK: all" in out.read_text()
    js = _cli(str(path), "--json")
    assert js.returncode == 0
    doc = __import__("json").loads(js.stdout)
    assert list(doc)[:3] == ["trust", "verification", "decision"]  # trust first, then the verdict
    assert doc["trust"] == "NOT verified" and doc["verification"]["trust"] == "NOT verified"
    assert doc["verification"]["ok"] is False  # mock not allowed
    assert doc["verification"]["appraisal"]["reference"] is None  # nothing pinned: refused too
    assert doc["decision"]["verdict"] == "run"


def test_cli_show_rejects_garbage_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.cbor"
    path.write_bytes(cbor2.dumps({"not": "a report"}))
    done = _cli(str(path))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(f"error: {path}: ")


@pytest.mark.parametrize(
    ("edit", "shown"),
    [
        (lambda p: p.update(evidence=[1, "x"]), "evidence: (malformed), (malformed)"),
    ],
    ids=["evidence-not-maps"],
)
def test_malformed_inner_fields_render_without_crashing(report_raw: bytes, edit: Any, shown: str) -> None:
    report = parse_report(_resigned(report_raw, edit))
    assert shown in render_text(report)
    assert html.escape(shown) in render_html(report)


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(workload={}),
        lambda p: p.update(
            workload={"timed_out": "no", "ms": 1, "exit_code": 0, "error": None, "output": None}
        ),
        lambda p: p.update(wipe={1: 2, "a": "b"}),
    ],
    ids=["empty-workload", "mistyped-workload", "odd-wipe"],
)
def test_malformed_workload_and_wipe_are_refused_by_the_schema(report_raw: bytes, edit: Any) -> None:
    """The report schema is strict (loader/report/document.py) for these maps too; show never sees them."""
    with pytest.raises(ReportError, match=r"workload|wipe"):
        parse_report(_resigned(report_raw, edit))
