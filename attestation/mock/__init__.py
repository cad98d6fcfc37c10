"""A software TEE for tests and demos. Never a substitute for hardware.

Its evidence is signed by a mock root whose private key is derived from a public seed (so
anyone can forge it: that is the point of marking it), every claim says `mock`, and every
verifier rejects it unless the caller passes allow_mock explicitly.
"""
