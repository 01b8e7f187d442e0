"""bench/run: every figure of issue 8 beside its baseline from the same run, as a table and JSON.

Run it as `bench/run` (which makes .venv and installs the bench extra on first use); see the
bench section of README.md for what each figure measures. Exit codes: 0 every figure was
measured, 1 a measurement failed (what was measured is still printed and written), 2 usage.
Whether the targets are met does not change the exit code: the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from .context import Context, MiB
from .large import DISK_RESULTS, TMPFS_RESULTS, run_disk, run_tmpfs
from .machine import git_state, load_average, machine_info
from .profile import Profiler, find_py_spy
from .progress import say
from .results import Result, exit_code, failed, table
from .small import SMALL_RESULTS, run_small
from .udp import UDP_RESULTS, run_udp

__all__ = ["FAMILIES", "main", "select"]


@dataclass(frozen=True)
class Family:
    name: str
    results: tuple[str, ...]
    run: Callable[[Context], list[Result]]
    about: str


FAMILIES: tuple[Family, ...] = (
    Family("large", DISK_RESULTS, run_disk, "one large file through the pair on this disk"),
    Family("tmpfs", TMPFS_RESULTS, run_tmpfs, "the same on a tmpfs, against scp"),
    Family("small", SMALL_RESULTS, run_small, "a flood of 1 KiB files, then a paced feed"),
    Family("udp", UDP_RESULTS, run_udp, "bench/udp_compare.py: UDP link vs udpcast, pydiode"),
)


class Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: unwind so every agent stops and every tmpfs unmounts."""


def select(names: Sequence[str] | None) -> list[Family]:
    """The families that produce the given family or result names (all for None), in order."""
    if not names:
        return list(FAMILIES)
    wanted = set()
    unknown = []
    for name in names:
        hits = [f.name for f in FAMILIES if name == f.name or name in f.results]
        if not hits:
            unknown.append(name)
        wanted.update(hits)
    if unknown:
        raise ValueError(f"unknown name(s): {', '.join(unknown)}")
    return [f for f in FAMILIES if f.name in wanted]


def _names_help() -> str:
    return "; ".join(f"{f.name}: {', '.join(f.results)}" for f in FAMILIES)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run",
        description=(
            "Measure zonegate against the machine's limits and the tools users would use "
            "instead; every figure beside its baseline from the same run. Table on stdout, "
            "progress on stderr."
        ),
        epilog=(
            "Names for --only (a family runs all its results): " + _names_help() + ". "
            "Exit codes: 0 all measured, 1 a measurement failed (the rest is still printed and "
            "written), 2 usage."
        ),
    )
    p.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files (< 5 min)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON here")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these families/results")
    p.add_argument("--workdir", type=Path, metavar="DIR", help="work here and keep everything")
    p.add_argument(
        "--profile", type=Path, metavar="DIR", help="run the agents under py-spy; files here"
    )
    p.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for deliveries (1800)"
    )
    args = p.parse_args(argv)
    try:
        args.families = select(args.only)
    except ValueError as e:
        p.error(f"--only: {e}; known: {_names_help()}")
    if args.workdir is not None:
        args.workdir = args.workdir.resolve()
        if args.workdir.exists() and (not args.workdir.is_dir() or any(args.workdir.iterdir())):
            p.error(f"--workdir {args.workdir} exists and is not an empty directory")
    if args.profile is not None and find_py_spy() is None:
        p.error("--profile needs py-spy: .venv/bin/pip install -e '.[bench]' (bench/run does)")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    if args.json is not None:
        parent = args.json.resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            p.error(f"--json {args.json}: {parent} is not a writable directory")
    return args


def run_family(family: Family, ctx: Context, errors: Path) -> list[Result]:
    """The family's results; on failure, a failed row (with the reason) for each one missing."""
    got: list[Result] = []
    try:
        got = family.run(ctx)
    except Exception as e:  # an interruption (BaseException) goes on up to main
        reason = f"{type(e).__name__}: {e}".strip()
        say(f"FAILED {family.name}: {reason}")
        with open(errors, "a") as f:
            f.write(f"--- {family.name}\n{traceback.format_exc()}\n")
        got = [failed(n, reason) for n in family.results]
    have = {r.name for r in got}
    missing = [n for n in family.results if n not in have]
    return got + [failed(n, f"{family.name} did not produce it") for n in missing]


def document(
    args: argparse.Namespace,
    ctx: Context,
    results: list[Result],
    machine: dict[str, Any],
    git: dict[str, Any],
    started: float,
    profiles: dict[str, Any] | None,
) -> dict[str, Any]:
    targeted = [r for r in results if r.target is not None]
    return {
        "tool": "bench/run",
        "started": datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "profiled": profiles is not None,
        "work": {
            "large_mib": ctx.large_size // MiB,
            "small_files": ctx.small_files,
            "paced_seconds": ctx.paced_seconds,
            "workdir": str(ctx.workdir),
        },
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "git": git,
        "machine": machine | {"load_average_now": load_average()},
        "results": [r.to_json() for r in results],
        "targets": {
            "met": [r.name for r in targeted if r.met() is True],
            "missed": [r.name for r in targeted if r.met() is False],
            "not_measured": [r.name for r in targeted if r.met() is None],
        },
        "details": ctx.details,
        "profiles": profiles,
    }


def _write(path: Path, doc: dict[str, Any]) -> bool:
    """Write the JSON atomically; False (with the reason on stderr) if it cannot be written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)
    except OSError as e:
        say(f"cannot write {path}: {e}")
        return False
    return True


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The first stop signal unwinds the run; later ones must not cut its clean-up short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _already_stopping)
    raise Interrupted(signal.Signals(signum).name)


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    say(f"{signal.Signals(signum).name}: already stopping (agents, tmpfs); please wait")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep = args.workdir is not None
    if keep:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir
    else:
        workdir = Path(tempfile.mkdtemp(prefix="zonegate-bench-"))
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    profiler = Profiler(args.profile.resolve()) if args.profile else None
    ctx = Context(
        workdir=workdir,
        quick=args.quick,
        large_size=(256 if args.quick else 1024) * MiB,
        small_files=2000 if args.quick else 10000,
        paced_seconds=40 if args.quick else 180,
        timeout=args.timeout,
        keep=keep,
        profiler=profiler,
    )
    started = time.time()
    machine, git = machine_info(workdir), git_state()
    fs = machine["filesystem"]
    say(
        f"bench/run{' --quick' if args.quick else ''}: {machine['cores']} cores "
        f"({machine['cpu_model']}), {fs['type']} at {fs['mount']}, load "
        f"{machine['load_average_at_start']}; commit {git.get('commit')}"
        f"{' (dirty)' if git.get('dirty') else ''}; workdir {workdir}"
    )
    if profiler:
        say(f"profiling the agents with py-spy into {profiler.directory} (figures are slower)")
    results: list[Result] = []
    interrupted = False
    profiles = None
    out_json = args.json or (workdir / "results.json" if keep else None)
    try:
        for family in args.families:
            say(f"== {family.name}: {family.about}")
            results += run_family(family, ctx, workdir / "errors.log")
            if out_json:
                _write(out_json, document(args, ctx, results, machine, git, started, None))
    except (Interrupted, KeyboardInterrupt) as e:
        interrupted = True
        say(f"interrupted ({e or type(e).__name__}); writing what was measured")
        done = {r.name for r in results}
        for family in args.families:
            results += [failed(n, "interrupted") for n in family.results if n not in done]
    if profiler is not None:
        profiles = profiler.summary()
        _print_profiles(profiles)
    written = out_json is None or _write(
        out_json, document(args, ctx, results, machine, git, started, profiles)
    )
    print(table(results), flush=True)
    code = exit_code(results) if written else 1
    if out_json and written:
        say(f"results written to {out_json}")
    if keep or code != 0 or interrupted:
        say(f"work files kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


def _print_profiles(profiles: dict[str, Any]) -> None:
    say(f"profiles (speedscope, open in https://www.speedscope.app): {profiles['directory']}")
    for label, prof in profiles["top_self"].items():
        waiting = 100 * prof["waiting_share"]
        say(f"  {label}: {prof['sampled']:.1f} s sampled, {waiting:.0f}% waiting; busy in")
        for f in prof["top"][:6]:
            say(f"    {100 * f['share']:5.1f}%  {f['function']}  {f['where']}")
    for problem in profiles["problems"]:
        say(f"  profile problem: {problem}")


if __name__ == "__main__":
    sys.exit(main())
