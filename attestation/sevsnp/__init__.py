"""AMD SEV-SNP: attestation reports, their certificates, the guest attester and the verifier.

Modules: `report` parses ATTESTATION_REPORT, `tcb` decodes TCB_VERSION per product,
`products` tells Milan/Genoa/Turin apart, `certtable` parses the host's certificate table,
`vcek` reads the VCEK/VLEK X.509 extensions, `roots` holds AMD's public ARK/ASK chains,
`verifier` checks signatures and chains, `validate` checks a report against an SnpPolicy,
`attester` and `ioctl` obtain reports inside a guest, `cli` is `evidence verify --type sev-snp`.
"""
