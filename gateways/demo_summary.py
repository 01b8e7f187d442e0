"""What the demo reports, computed only from what the gateways wrote to disk and serve.

Per flow: what was delivered (hashed again, compared with what was dropped), what was refused
where and why (with its quarantine entry). Per gateway: whether its audit log verifies as
`zonegate audit verify` checks it (every record's hash chain, the Merkle tree, the signed
checkpoints against the gateway's audit key). Per relayed message: its audit trail across the
logs of every gateway on its route (as `zonegate audit show MSGID LOG...`), grouped by hop, and
the signed hop records it arrived with, checked again here against the relays' public keys.
And whether a relay, or any link directory on the way, holds a relayed file's plaintext.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from ..audit.tools import story
from ..audit.verify import verify
from ..transfer import envelope as env
from ..transfer import hops as hop_records
from ..transfer.keys import load_signing_public
from ..transfer.spool import Spool
from .agent import AgentContext
from .demo_network import DemoFlow, DemoNetwork
from .relay import FORWARD

__all__ = [
    "audit_results",
    "flow_results",
    "plaintext_at_relays",
    "scrape_metrics",
    "trail",
]

#: The audit events each role on a route must have recorded for one relayed message.
REQUIRED = {
    "originator": ("sealed", "sent"),
    "relay": ("received-on-link", "verified", "relayed"),
    "receiver": ("verified", "delivered"),
}


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _spools(root: Path, flow: DemoFlow) -> list[tuple[str, Spool]]:
    """Every spool a message of `flow` can stop in: the gateways' own and the relays'."""
    out = [(flow.sender, Spool(root / flow.sender / "spool"))]
    out += [(r, Spool(root / r / "spool" / "relay")) for r in flow.relays]
    out.append((flow.receiver, Spool(root / flow.receiver / "spool")))
    return out


def counts(root: Path, flow: DemoFlow) -> tuple[int, int, int]:
    """(delivered, refused, corrupt) of `flow` right now: for the progress display."""
    delivered = refused = corrupt = 0
    for gateway, spool in _spools(root, flow):
        for state in (
            "quarantine",
            "corrupt",
            *(("delivered",) if gateway == flow.receiver else ()),
        ):
            n = 0
            for msg_id in spool.ids(state):
                try:
                    n += spool.read_meta(state, msg_id).flow in (flow.name, "unknown")
                except (OSError, ValueError):
                    n += state == "corrupt"
            if state == "delivered":
                delivered += n
            elif state == "quarantine":
                refused += n
            else:
                corrupt += n
    return delivered, refused, corrupt


def flow_results(
    root: Path, flow: DemoFlow, sent: list[Path], expected_refusals: dict[str, str] | None
) -> dict[str, Any]:
    """Delivered, refused and lost files of one flow, checked against the files `sent`.

    A delivery is identical when its bytes hash to the SHA-256 of a file of that name that was
    sent (and to the hash the envelope carried). With `expected_refusals` (name -> reason code,
    for the samples), exactly those files must be refused, for exactly that reason.
    """
    remaining = Counter((p.name, sha256_file(p)) for p in sent)
    delivered: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    corrupt: list[dict[str, Any]] = []
    for gateway, spool in _spools(root, flow):
        if gateway == flow.receiver:
            for msg_id in spool.ids("delivered"):
                meta = spool.read_meta("delivered", msg_id)
                if meta.flow != flow.name:
                    continue
                path = Path(meta.extra["delivered_as"])
                digest = sha256_file(path)
                key = (meta.original_name, digest)
                identical = remaining[key] > 0 and digest == meta.sha256
                if identical:
                    remaining[key] -= 1
                d = {
                    "name": meta.original_name,
                    "message_id": msg_id,
                    "gateway": gateway,
                    "path": str(path),
                    "sha256": digest,
                    "size": meta.size,
                    "identical": identical,
                }
                if "approvers" in meta.extra:
                    d["approvers"] = [a["name"] for a in meta.extra["approvers"]]
                delivered.append(d)
        for msg_id in spool.ids("quarantine"):
            meta = spool.read_meta("quarantine", msg_id)
            if meta.flow != flow.name:
                continue
            refused.append(
                {
                    "name": meta.original_name or meta.extra.get("claimed_id", msg_id),
                    "gateway": gateway,
                    "reason_code": meta.reason_code,
                    "reason": f"{meta.reason_code}: {meta.reason}",
                    "quarantine_path": str(spool.entry("quarantine", msg_id)),
                }
            )
        corrupt += [
            {"gateway": gateway, "path": str(spool.entry("corrupt", i))}
            for i in spool.ids("corrupt")
        ]
    accounted = len(delivered) + len(refused) == len(sent)
    ok = accounted and not corrupt and all(d["identical"] for d in delivered)
    if expected_refusals is not None:
        ok = ok and {r["name"]: r["reason_code"] for r in refused} == expected_refusals
    return {
        "name": flow.name,
        "from": flow.source,
        "to": flow.destination,
        "route": list(flow.route),
        "sent": len(sent),
        "delivered": sorted(delivered, key=lambda d: d["name"]),
        "refused": sorted(refused, key=lambda r: r["name"]),
        "corrupt": corrupt,
        "accounted": accounted,
        "ok": ok,
    }


def audit_results(root: Path, network: DemoNetwork) -> list[dict[str, Any]]:
    """Each gateway's log verified as `zonegate audit verify --key <audit.pub>
    --require-checkpoints` does: chain, tree, and checkpoints signed by its audit key."""
    out = []
    for g in network.gateways:
        log = root / g.name / "audit" / "audit.jsonl"
        key = load_signing_public(root / "keys" / f"{g.name}.audit.pub")
        r = verify(log, public_key=key, require_checkpoints=True)
        out.append(
            {
                "gateway": g.name,
                "path": str(log),
                "ok": r.ok,
                "records": r.records,
                "checkpoints": r.checkpoints,
                "signatures_checked": r.signatures_checked,
                "uncovered": r.uncovered,
                "problem": r.problem,
            }
        )
    return out


def _role(flow: DemoFlow, gateway: str) -> str:
    if gateway == flow.sender:
        return "originator"
    return "receiver" if gateway == flow.receiver else "relay"


def _hop_copy(root: Path, flow: DemoFlow, msg_id: str) -> dict[str, Any]:
    """The hop records the message carried on its last link, as the last relay keeps what it
    sent: read and checked again (chain, route, each relay's signature, the originator's
    signature over the inner envelope) with the public keys in `root/keys` only."""
    path = root / flow.relays[-1] / "spool" / "relay" / "sent" / msg_id / FORWARD
    result: dict[str, Any] = {"source": str(path), "records": [], "verified": False}

    def key(gateway: str, key_id: str) -> Any:
        if gateway not in flow.route:  # a name from the file: never a path we did not choose
            return None
        public = load_signing_public(root / "keys" / f"{gateway}.sign.pub")
        return public if env.key_id(public) == key_id else None

    try:
        with open(path, "rb") as src:
            records, offset = hop_records.read_wrapper(src)
            header = env.verify_envelope(src, key)
            digest = hop_records.envelope_digest(src, offset)
            hop_records.check_hops(records, header, digest, flow.route, key)
    except FileNotFoundError:
        result["problem"] = "the last relay no longer keeps the envelope it sent"
        return result
    except (env.EnvelopeError, hop_records.HopError) as e:
        result["problem"] = str(e)
        return result
    result["records"] = [
        {k: r[k] for k in ("gateway", "from", "to", "at", "key", "sig")} for r in records
    ]
    result["verified"] = header.message_id == msg_id
    return result


def trail(root: Path, network: DemoNetwork, flow: DemoFlow, delivered: dict) -> dict[str, Any]:
    """One relayed message's life across the logs of its route, hop by hop, and whether every
    hop is there: each gateway's required events, in route order in time, the receiver's
    delivered record naming every relay in order, and hop records that verify."""
    msg_id = delivered["message_id"]
    logs = [root / g / "audit" / "audit.jsonl" for g in flow.route]
    records = story(logs, msg_id)
    problems: list[str] = []
    hops = []
    copy = _hop_copy(root, flow, msg_id)
    by_relay = {r["gateway"]: r for r in copy["records"]}
    for gateway in flow.route:
        mine = [r for r in records if r["gateway"] == gateway]
        role = _role(flow, gateway)
        events = [
            {"time": r["time"], "event": r["event"], "agent": r["agent"], "outcome": r["outcome"]}
            for r in mine
        ]
        missing = [e for e in REQUIRED[role] if e not in {x["event"] for x in events}]
        if missing:
            problems.append(f"{gateway} recorded no {', '.join(missing)}")
        g = network.gateway(gateway)
        hops.append(
            {
                "gateway": gateway,
                "role": role,
                "tier": g.tier,
                "site": g.site,
                "zone": g.zone,
                "events": events,
                "hop_record": by_relay.get(gateway),
            }
        )
    # in time: sealed at the origin, verified at each relay in turn, verified then delivered
    marks = [_first(hops[0], "sealed")]
    marks += [_first(h, "verified") for h in hops[1:]]
    marks.append(_first(hops[-1], "delivered"))
    if None in marks or marks != sorted(marks):  # type: ignore[type-var]
        problems.append("the hops' records are not in route order in time")
    final = next((r for r in records if r["event"] == "delivered"), None)
    listed = json.loads((final or {}).get("extra", {}).get("hops", "[]"))
    steps = [(h["gateway"], h["from"], h["to"]) for h in listed]
    want = [
        (flow.route[i], flow.route[i - 1], flow.route[i + 1]) for i in range(1, len(flow.route) - 1)
    ]
    if steps != want:
        problems.append(f"the receiver's delivered record lists hops {steps}, expected {want}")
    if not copy["verified"]:
        problems.append(f"hop records: {copy.get('problem') or 'not about this message'}")
    return {
        "message_id": msg_id,
        "flow": flow.name,
        "name": delivered["name"],
        "route": list(flow.route),
        "hops": hops,
        "delivered_record_hops": listed,
        "hop_records": copy,
        "complete": not problems,
        "problems": problems,
    }


def _first(hop: dict[str, Any], event: str) -> str | None:
    return next((e["time"] for e in hop["events"] if e["event"] == event), None)


def plaintext_at_relays(
    root: Path, flow: DemoFlow, sources: list[Path], link_dirs: list[Path]
) -> dict[str, Any]:
    """Look for each sent file's bytes in every file under the relays' directories and the
    link directories of the flow (ferry, sftp drop): the relays must hold none of them."""
    needles = [p.read_bytes() for p in sources]
    needles = [n for n in needles if len(n) >= 16]  # shorter content could match by chance
    places = [root / r for r in flow.relays] + link_dirs
    scanned = 0
    found = []
    for place in places:
        for p in sorted(place.rglob("*")):
            if not p.is_file() or p.is_symlink():
                continue
            scanned += 1
            data = p.read_bytes()
            if any(n in data for n in needles):
                found.append(str(p))
    return {
        "flow": flow.name,
        "places": [str(p) for p in places],
        "files_scanned": scanned,
        "needles": len(needles),
        "found": found,
        "ok": bool(needles) and not found,
    }


def scrape_metrics(root: Path, network: DemoNetwork, agents: dict[str, list[str]]) -> list[dict]:
    """Each agent's Prometheus endpoint (as its runtime file names it): the message counters."""
    out = []
    for g in network.gateways:
        for agent in agents[g.name]:
            entry: dict[str, Any] = {"gateway": g.name, "agent": agent, "url": None, "messages": []}
            try:
                runtime = AgentContext.runtime_file(root / g.name / "spool", agent)
                entry["url"] = url = json.loads(runtime.read_text())["metrics"]
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our loopback
                    text = resp.read().decode()
            except (OSError, ValueError, KeyError, TypeError) as e:
                entry["error"] = f"{type(e).__name__}: {e}"
            else:
                prefix = "zonegate_messages_total{"
                entry["messages"] = [x for x in text.splitlines() if x.startswith(prefix)]
            out.append(entry)
    return out
