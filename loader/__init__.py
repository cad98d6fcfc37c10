"""trusted-loader: attest, measure, decide, run, and report, at confidential-VM boot."""

__version__ = "0.1.0"
