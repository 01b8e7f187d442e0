"""Coverage-guided fuzzing of one target with atheris (libFuzzer), for a bounded time.

    python tests/fuzz/run.py TARGET SECONDS [WORKDIR]

Exit 0: no crash in that time. Non-zero: a crash; libFuzzer prints the input and writes it to
WORKDIR/crash-*, which tests/test_fuzz.py keeps. Add the input to tests/fuzz/corpus/TARGET/ once
fixed, so every later run replays it first.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["zonegate"]):
    import targets


def main() -> None:
    name, seconds = sys.argv[1], int(sys.argv[2])
    work = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp(prefix="zg-fuzz-"))
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(targets.seed_corpus(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    target = targets.TARGETS[name]
    args = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        "-timeout=10",
        "-rss_limit_mb=1024",
        "-max_len=65536",
        f"-artifact_prefix={work}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
