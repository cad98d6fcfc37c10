"""X.509 for trusted-loader: chain validation, bounded JSON, the evidence extension, CSRs, self-issue.

The lowest library of the project: it imports neither `attestation` nor `loader`, except its
subpackage `certs.ca` (the attestation-based CA), which sits above `attestation` because it
appraises evidence (docs/architecture.md, tests/test_architecture.py).
"""
