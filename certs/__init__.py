"""Certificates of trusted-loader: the evidence extension, CSRs, self-issue, and the CA issuing them.

Above `attestation` (the CA appraises evidence) and `x509kit` (chain validation); it never imports
`loader`.
"""
