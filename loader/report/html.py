"""A self-contained HTML page of a report, for an auditor (`report show --html`).

Every value comes from the report, which its maker chose: each one goes through
html.escape (text and attributes), and the page carries a Content-Security-Policy that
forbids scripts, frames, forms and any fetch, so even a mistake here could not run code or
leak the page. No external resources: one file, readable offline.
"""

from __future__ import annotations

import html
import re
from typing import Any

from loader.report.document import Report
from loader.report.show import MOCK_BANNER, Section, plain, summarize, trust_of

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%} td{padding:.2rem .6rem;vertical-align:top}
td.k{color:#555;width:12rem;overflow-wrap:break-word}
td.v{font-family:ui-monospace,monospace;overflow-wrap:break-word}
tr.ok td.v{color:#0a6b2a} tr.bad td.v{color:#a3161b;font-weight:600} tr.warn td.v{color:#8a5a00}
.verdict{display:inline-block;padding:.2rem .7rem;border-radius:.3rem;color:#fff}
.run{background:#0a6b2a} .abort{background:#a3161b} .unverified{background:#8a5a00}
.trust{font-size:1.2rem;font-weight:700;padding:.5rem .8rem;border-radius:.3rem;color:#fff}
.banner{background:#8a5a00;color:#fff;font-weight:700;padding:.6rem 1rem;border-radius:.3rem}
footer{margin-top:2rem;color:#777;font-size:.85rem}
"""


def _e(text: object) -> str:
    return html.escape(plain(str(text)), quote=True)


_LONG_HEX = re.compile(r"[0-9a-fA-F]{32,}")


def _breakable(escaped: str) -> str:
    """Allow line breaks only at sensible points: after "sha256:" and every 16 hex digits of a
    long hex string, never inside a word (`overflow-wrap` only breaks what cannot fit)."""
    escaped = escaped.replace("sha256:", "sha256:<wbr>")
    return _LONG_HEX.sub(lambda m: "<wbr>".join(re.findall(".{1,16}", m.group(0))), escaped)


def _section(section: Section) -> str:
    rows = "\n".join(
        f'<tr class="{_e(row.tone)}"><td class="k">{_e(row.label)}</td>'
        f'<td class="v">{_breakable(_e(row.value))}</td></tr>'
        for row in section.rows
    )
    return f"<h2>{_e(section.title)}</h2>\n<table>\n{rows}\n</table>"


_TRUST_CLASS = {"verified": "run", "NOT verified": "abort"}


def render_html(report: Report, verification: Any = None) -> str:
    """Opens with the trust state, then the verdict: a green RUN only for a verified report."""
    verdict = report.payload["decision"]["verdict"]
    trust = trust_of(verification)
    trusted = verification is not None and verification.ok
    css_class = "abort" if verdict != "run" else "run" if trusted else "unverified"
    trust_class = _TRUST_CLASS.get(trust, "unverified")
    banner = ""
    if verification is not None and verification.is_mock:
        banner = f'<p class="banner">{_e(MOCK_BANNER)}</p>\n'
    body = "\n".join(_section(s) for s in summarize(report, verification))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">
<meta name="referrer" content="no-referrer">
<title>trusted-loader report {_e(report.digest)}</title>
<style>{_STYLE}</style>
</head>
<body>
{banner}<p><span class="trust {trust_class}">{_e(trust.upper() if trust == "MOCK" else trust)}</span></p>
<h1>Integrity report <span class="verdict {css_class}">{_e(str(verdict).upper())}</span></h1>
<p>{_breakable(_e(report.digest))}</p>
{body}
<footer>Rendered by trusted-loader from the report's own fields. Check it with
<code>trusted-loader report verify</code>; this page alone proves nothing.</footer>
</body>
</html>
"""
