"""Fuzzing: every parser that reads outside input refuses cleanly, whatever it is given.

Two engines over the same targets (tests/fuzz/targets.py): hypothesis in-process for quick
property checks, and atheris (coverage-guided, libFuzzer) in a subprocess for a bounded time
per target, marked `fuzz`. A crash in either fails the suite; the crashing input is printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import targets

FUZZ_SECONDS = 6
RUNNER = Path(__file__).resolve().parent / "fuzz" / "run.py"


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seed_corpus_is_handled(name: str) -> None:
    seeds = targets.seed_corpus(name)
    assert seeds
    for seed in seeds:
        targets.TARGETS[name](seed)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused_cleanly(name: str, data: bytes) -> None:
    targets.TARGETS[name](data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_seeds_are_refused_cleanly(name: str, data: st.DataObject) -> None:
    seeds = targets.seed_corpus(name)
    seed = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(1, 8))):
        if not seed:
            break
        i = data.draw(st.integers(0, len(seed) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "zero"]))
        if op == "flip":
            seed[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del seed[i:]
        elif op == "dup":
            seed[i:i] = seed[i : i + data.draw(st.integers(1, 64))]
        else:
            seed[i] = 0
    targets.TARGETS[name](bytes(seed))


@pytest.mark.fuzz
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_atheris_finds_no_crash(name: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(RUNNER), name, str(FUZZ_SECONDS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
        check=False,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    detail = "\n".join(f"{p.name}: {p.read_bytes()[:200]!r}" for p in crashes)
    assert r.returncode == 0 and not crashes, f"{name}: {detail}\n{r.stderr[-3000:]}"
    assert "number_of_executed_units" in r.stderr
