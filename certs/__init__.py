"""X.509 for trusted-loader: chain validation, the evidence extension, certificate issuance.

A library shared by the loader, the CA service and verifiers; it never imports `loader`.
"""
