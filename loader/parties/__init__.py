"""The parties' data: grants, sealed outputs, chunked encryption, archives, CVM-certificate checks.

Used by the boot's multi-party steps and by the parties' commands; built on `loader.report`
(the approved list, party keys) and `loader.measure`.
"""
