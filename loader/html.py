"""A self-contained HTML page of a report, for an auditor (`report show --html`).

Every value comes from the report, which its maker chose: each one goes through
html.escape (text and attributes), and the page carries a Content-Security-Policy that
forbids scripts, frames, forms and any fetch, so even a mistake here could not run code or
leak the page. No external resources: one file, readable offline.
"""

from __future__ import annotations

import html
from typing import Any

from loader.report import Report
from loader.show import Section, plain, summarize

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%} td{padding:.2rem .6rem;vertical-align:top}
td.k{white-space:nowrap;color:#555;width:12rem} td.v{font-family:ui-monospace,monospace;word-break:break-all}
tr.ok td.v{color:#0a6b2a} tr.bad td.v{color:#a3161b;font-weight:600} tr.warn td.v{color:#8a5a00}
.verdict{display:inline-block;padding:.2rem .7rem;border-radius:.3rem;color:#fff}
.run{background:#0a6b2a} .abort{background:#a3161b}
footer{margin-top:2rem;color:#777;font-size:.85rem}
"""


def _e(text: object) -> str:
    return html.escape(plain(str(text)), quote=True)


def _section(section: Section) -> str:
    rows = "\n".join(
        f'<tr class="{_e(row.tone)}"><td class="k">{_e(row.label)}</td>'
        f'<td class="v">{_e(row.value)}</td></tr>'
        for row in section.rows
    )
    return f"<h2>{_e(section.title)}</h2>\n<table>\n{rows}\n</table>"


def render_html(report: Report, verification: Any = None) -> str:
    verdict = report.payload["decision"]["verdict"]
    css_class = "run" if verdict == "run" else "abort"
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
<h1>Integrity report <span class="verdict {css_class}">{_e(str(verdict).upper())}</span></h1>
<p>{_e(report.digest)}</p>
{body}
<footer>Rendered by trusted-loader from the report's own fields. Check it with
<code>trusted-loader report verify</code>; this page alone proves nothing.</footer>
</body>
</html>
"""
