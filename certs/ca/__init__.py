"""The attestation-based CA: appraisal policy, nonces, issuance (`authority`), the wire format, the HTTP
service and its command line (`trusted-loader ca`).

Above `attestation` (it verifies the evidence it certifies) and the rest of `certs`; it never imports
`loader`.
"""
