"""Generic X.509 and bounded-parsing utilities: chain validation, certificate parsing, memos, JSON limits.

The lowest library of the project: it imports neither `attestation`, `certs` nor `loader`.
"""
