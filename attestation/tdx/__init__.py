"""Intel TDX: quote parsing (quote.py), verification (verifier.py) against Intel's PCK chain and
PCS collateral (collateral.py, pck.py, tcb.py), policy validation (validate.py), the attester
(attester.py: configfs-tsm quotes, RTMR extension) and RTMR replay (rtmr.py)."""
