"""The in-CVM boot: configuration, key, enrolment, staging, decision, runners, notify, signals.

`loader.boot.sequence.boot` is the sequence (DESIGN "What it is"); the parties' steps are in
`multiparty`, the containment in `sandbox`/`sandbox_init`/`ocirun`. It uses every wing below it
(report, parties, publish, measure) and is used only by the command line.
"""
