"""`udp_vs_udpcast` and `udp_vs_pydiode`, as measured by bench/udp_compare.py in a subprocess.

udp_compare.py owns the measurement (network namespaces joined by a veth pair, our UDP link
against udpcast and pydiode moving the same file at the same redundancy); this module only runs

    python bench/udp_compare.py --netns --mib N --loss 0 --json FILE

and takes from FILE the results of the same schema as ours (a `results` list, or an object keyed
by result name, with `value`, `unit`, `baseline`, `baseline_value`). The ratio is recomputed
here from the two values. If the script fails, times out or does not write those results, both
rows are recorded as failed with the reason: a figure is never made up.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .context import Context, MiB
from .machine import REPO
from .progress import Progress, say
from .results import Result, failed, measured

__all__ = ["UDP_RESULTS", "parse_udp_results", "run_udp"]

UDP_RESULTS = ("udp_vs_udpcast", "udp_vs_pydiode")
SCRIPT = REPO / "bench" / "udp_compare.py"


def _entries(doc: Any) -> dict[str, Mapping[str, Any]]:
    if isinstance(doc, Mapping) and isinstance(doc.get("results"), list):
        return {
            e["name"]: e
            for e in doc["results"]
            if isinstance(e, Mapping) and isinstance(e.get("name"), str)
        }
    if isinstance(doc, Mapping):
        return {k: v for k, v in doc.items() if isinstance(v, Mapping)}
    return {}


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def parse_udp_results(doc: Any, source: str) -> list[Result]:
    """Our two UDP rows from udp_compare.py's JSON document; failed rows for what is missing."""
    entries = _entries(doc)
    out = []
    for name in UDP_RESULTS:
        e = entries.get(name)
        if e is None:
            out.append(failed(name, f"{source} has no result named {name}"))
            continue
        if e.get("error"):
            out.append(failed(name, f"udp_compare.py: {e['error']}", str(e.get("unit", ""))))
            continue
        value, base = _number(e.get("value")), _number(e.get("baseline_value"))
        unit, baseline = str(e.get("unit", "")), str(e.get("baseline", ""))
        if value is None or base is None or base <= 0:
            why = f"{source}: {name} has no numeric value and positive baseline_value"
            out.append(failed(name, why, unit, baseline))
            continue
        out.append(measured(name, value, unit, baseline, base))
    return out


def run_udp(ctx: Context) -> list[Result]:
    work = ctx.folder("udp")
    mib = ctx.large_size // MiB
    out_json = work / "udp_compare.json"
    log = work / "udp_compare.log"
    cmd = [sys.executable, str(SCRIPT), "--netns", "--mib", str(mib), "--loss", "0"]
    cmd += ["--json", str(out_json)]
    say(f"udp: {' '.join(cmd[1:])} (log: {log})")
    timeout = min(ctx.timeout, 240.0 if ctx.quick else 900.0)
    progress = Progress("udp_compare.py")
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    progress.close()
                    reason = f"udp_compare.py did not finish within {timeout:.0f}s (log: {log})"
                    return [failed(n, reason) for n in UDP_RESULTS]
                progress.update(None, "running")
                time.sleep(0.5)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    progress.close()
    text = log.read_text(errors="replace")
    ctx.details["udp"] = {"command": cmd[1:], "exit": proc.returncode, "log": str(log)}
    if proc.returncode != 0:
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
        reason = f"udp_compare.py exited {proc.returncode}: {last.strip()[:300]} (log: {log})"
        return [failed(n, reason) for n in UDP_RESULTS]
    try:
        doc = json.loads(out_json.read_text())
    except FileNotFoundError:
        return [failed(n, f"udp_compare.py wrote no JSON at {out_json}") for n in UDP_RESULTS]
    except ValueError as e:
        return [failed(n, f"udp_compare.py wrote invalid JSON: {e}") for n in UDP_RESULTS]
    ctx.details["udp"]["json"] = doc
    return parse_udp_results(doc, Path(out_json).name)
