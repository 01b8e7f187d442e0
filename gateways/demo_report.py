"""The demo's summary on screen: per flow, per relayed message, per gateway, and one Result line.

Everything printed comes from the summary mapping demo.py computed (the same one `--json`
prints), so the screen and the JSON cannot tell different stories.
"""

from __future__ import annotations

from typing import Any

__all__ = ["print_summary", "result_line"]

_INTO = {
    "import": "into the internal zone",
    "publish": "into the internet zone, after review (先审后发)",
    "report": "into the bureau's internal zone, relayed up the tiers",
    "dispatch": "into the judicial office's government zone, relayed down the tiers",
}


def result_line(s: dict[str, Any]) -> str:
    flows = s["flows"].values()
    files = sum(f["sent"] for f in flows)
    delivered = sum(len(f["delivered"]) for f in flows)
    refused = sum(len(f["refused"]) for f in flows)
    if not s["ok"]:
        first = s["problems"][0] if s["problems"] else "see above"
        more = f" (and {len(s['problems']) - 1} more)" if len(s["problems"]) > 1 else ""
        return f"FAILED: {first}{more}"
    return (
        f"OK: {len(s['flows'])} flows over {s['transport']}, every file accounted for "
        f"({files}: {delivered} delivered byte-identical, {refused} refused with the reason), "
        f"{len(s['audit'])} audit logs verify, {len(s['trails'])} relayed messages show every hop"
    )


def _flow(name: str, f: dict[str, Any], s: dict[str, Any]) -> None:
    verb = "Published" if name == "publish" else "Delivered"
    print(
        f"\n{verb} ({len(f['delivered'])}) {_INTO.get(name, '')}, flow '{name}' "
        f"({f['from']} -> {f['to']}):"
    )
    for d in f["delivered"]:
        mark = "ok " if d["identical"] else "BAD"
        print(f"  [{mark}] {d['name']}  ({d['size']} B, sha256 {d['sha256'][:16]}…)")
        print(f"        -> {d['path']}")
    if name == "publish":
        p = s["publication"]
        check = p.get("check") or {}
        if check:
            print(
                f"        approved by {', '.join(check['approvers'])}; "
                "submitter's own approval refused"
            )
            state = (
                "valid" if check["signature_valid"] else f"INVALID: {check['signature_problem']}"
            )
            print(f"        signed manifest: {state}  (beside it: .zgmanifest.json, .zgsig)")
            print(f"        check it: {check['verify_command']}")


def _trail(t: dict[str, Any]) -> None:
    print(f"\n  {t['flow']} {t['message_id']}  {t['name']!r}")
    for i, h in enumerate(t["hops"], start=1):
        events = ", ".join(e["event"] for e in h["events"])
        when = h["events"][0]["time"][11:23] if h["events"] else "--:--:--"
        print(f"    {i}. {h['gateway']:<27} tier {h['tier']} {h['role']:<10} {when}  {events}")
        r = h.get("hop_record")
        if r:
            print(
                f"         hop record: {r['from']} -> {r['to']} at {r['at'][11:23]}, "
                f"key {r['key'][:12]}…, signature {r['sig'][:16]}…"
            )
    c = t["hop_records"]
    if c["verified"]:
        print(
            f"    hop records: {len(c['records'])}, chain, route and signatures verify; "
            "the inner envelope is the originator's, untouched"
        )
    state = "every hop shown" if t["complete"] else "INCOMPLETE: " + "; ".join(t["problems"])
    print(f"    trail: {state}")


def print_summary(s: dict[str, Any], quiet: bool) -> None:
    if quiet:
        return
    for name, f in s["flows"].items():
        _flow(name, f, s)
    refused = [(n, r) for n, f in s["flows"].items() for r in f["refused"]]
    print(f"\nRefused ({len(refused)}), kept in quarantine with the reason:")
    for name, r in refused:
        print(f"  [no ] {r['name']} (flow {name}, at {r['gateway']}): {r['reason']}")
        print(f"        -> {r['quarantine_path']}")
    print("\nRelayed messages, audit trail hop by hop (zonegate audit show MSGID LOG...):")
    for t in s["trails"]:
        _trail(t)
    for p in s["plaintext"]:
        state = "none found" if p["ok"] else f"FOUND in {', '.join(p['found']) or '(no sample)'}"
        print(
            f"  plaintext of {p['flow']} at the relays and on the links: {state} "
            f"({p['files_scanned']} files scanned)"
        )
    print("\nAudit logs (records, Merkle tree, signed checkpoints):")
    for a in s["audit"]:
        state = (
            f"verifies, {a['checkpoints']} signed checkpoint(s)"
            if a["ok"]
            else f"FAILS: {a['problem']}"
        )
        print(f"  {a['gateway']:<27} {a['records']:>4} records, hash chain {state}  ({a['path']})")
    print("\nMetrics (scraped):")
    for m in s["metrics_samples"]:
        print(f"  {m['gateway']} {m['agent']}: {m['url'] or m.get('error')}")
        for line in m["messages"]:
            print(f"      {line}")
    print(f"\nResult: {s['result']}")
    if not s.get("kept"):
        print("(temporary workdir removed; keep everything with --workdir DIR)")
