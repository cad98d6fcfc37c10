"""The on-chain subject of a report: which order (or job) it is about.

subject = SHA-256("trusted-loader/subject/v1\\0" ‖ order-or-job-id), the order taken from the
approved list when the report has one, else the configured job id (possibly empty).
"""

from __future__ import annotations

import hashlib

from loader.report.document import parse_report

SUBJECT_TAG = b"trusted-loader/subject/v1\x00"


def subject_for(order_or_job: str) -> bytes:
    return hashlib.sha256(SUBJECT_TAG + order_or_job.encode("utf-8")).digest()


def report_subject(raw: bytes) -> bytes:
    """The subject of a report; raises ReportError when the bytes are not a report."""
    job = parse_report(raw).payload["job"]
    return subject_for(job["order"] or job["id"])
