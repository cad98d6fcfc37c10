"""What a verifier needs: the integrity report, COSE, verify, replay, show, HTML, the approved list.

Also the pieces the verifier shares with the boot (the decision, the collateral judgement, the
workload boundary, the parties' signatures), so that one path makes one decision. Nothing here
imports the boot, the parties' tools, publishing or the command line (tests/test_architecture.py).
"""
