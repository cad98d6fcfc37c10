"""Human rendering of a report for `report show`."""

from __future__ import annotations

from loader.report import Report


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def render_text(report: Report) -> str:
    p = report.payload
    d = p["decision"]
    lines = [
        f"report {report.digest}",
        f"  job        {p['job']['id'] or '-'} (order {p['job']['order'] or '-'})",
        f"  verdict    {d['verdict'].upper()}",
    ]
    lines += [f"  reason     {r}" for r in d["reasons"]]
    lines.append(
        f"  tee        {p['tee']}; evidence: {', '.join(e['type'] for e in p['evidence']) or 'none'}"
    )
    lines.append(f"  policy     {p['policy']['digest'] or '(not loaded)'}")
    signers = p["policy"]["signers"]
    if signers:
        required = ", ".join(s["name"] for s in signers if s["required"])
        lines.append(f"  signers    {len(p['policy']['signatures'])} signature(s); required: {required}")
    for i in p["inputs"]:
        label = i["role"] if i["role"] != "dataset" else f"dataset {i['name']}"
        state = (
            "approved" if i["expected"] == i["digest"] else "NOT APPROVED" if i["expected"] else "not listed"
        )
        if i.get("encrypted") and not i["digest"]:
            state = "encrypted, not decrypted"
        lines.append(
            f"  input      {label:<20} {i['digest'] or '-':<71}  {i['kind']}, {_size(i['size'])}, {state}"
        )
        if i.get("encrypted"):
            lines.append(f"             {'':<20} ciphertext {i['encrypted']['digest']}")
    wl = p["workload"]
    if wl is not None:
        state = "timed out" if wl["timed_out"] else f"exit {wl['exit_code']}"
        lines.append(
            f"  workload   {state} after {wl['ms'] / 1000:.2f} s"
            + (f"; {wl['error']}" if wl["error"] else "")
        )
        if wl["output"]:
            sealed = wl["output"].get("sealed")
            to = f", sealed to {sealed['recipient']}" if isinstance(sealed, dict) else ""
            lines.append(f"  output     {wl['output']['digest']} ({wl['output']['files']} files{to})")
    h = p["hashing"]
    lines.append(f"  hashing    {_size(h['bytes'])} in {h['ms'] / 1000:.2f} s")
    signer = report.chain[0].subject.rfc4514_string() if report.chain else "?"
    lines.append(f"  signed     {p['timestamps']['finished']} by {signer}")
    return "\n".join(lines) + "\n"
