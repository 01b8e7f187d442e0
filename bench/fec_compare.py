"""RaptorQ (raptorq) against Reed-Solomon (zfec) on bursty loss: what each recovers per byte of
redundancy, and how fast. Loss is Gilbert-Elliott (bursts), the pattern a full socket buffer or
a congested switch produces. Usage: python bench/fec_compare.py [--mib 8] [--trials 20]

`--sizes`: instead, RaptorQ's speed per block size (transfer/udp_encode.py's BLOCK_SIZE): encode
(K source + 25% repair packets) and decode with 5% of the source symbols lost, MB/s of block.
The codec builds its encoding plan anew for each block (about half of the encode time at 1 MiB),
which is why the per-byte cost rises past a few MiB and why blocks are not made smaller either.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import raptorq
import zfec

SYMBOL = 1400
RQ_BLOCK = 1024 * 1024
RS_K = 64  # zfec shares per block: m <= 256 limits k for useful redundancy


def gilbert(n: int, rng: random.Random, loss: float, burst: float) -> list[bool]:
    """True = delivered; mean loss `loss`, mean burst length `burst`."""
    p_good = 1 / burst
    p_bad = loss * p_good / (1 - loss)
    bad, out = False, []
    for _ in range(n):
        bad = (rng.random() < p_bad) if not bad else (rng.random() >= p_good)
        out.append(not bad)
    return out


def rq_trial(data: bytes, red: float, keep_fn) -> tuple[bool, float, float]:
    t0 = time.perf_counter()
    blocks = []
    for off in range(0, len(data), RQ_BLOCK):
        chunk = data[off : off + RQ_BLOCK]
        k = math.ceil(len(chunk) / SYMBOL)
        enc = raptorq.Encoder.with_defaults(chunk, SYMBOL)
        blocks.append((len(chunk), enc.get_encoded_packets(max(1, math.ceil(k * red)))))
    t1 = time.perf_counter()
    keep = keep_fn(sum(len(p) for _, p in blocks))
    i, ok, out = 0, True, []
    for length, packets in blocks:
        dec = raptorq.Decoder.with_defaults(length, SYMBOL)
        res = None
        for p in packets:
            if keep[i] and res is None:
                res = dec.decode(p)
            i += 1
        ok &= res is not None
        out.append(res or b"")
    t2 = time.perf_counter()
    return ok and b"".join(out) == data, t1 - t0, t2 - t1


def rs_trial(data: bytes, red: float, keep_fn) -> tuple[bool, float, float]:
    t0 = time.perf_counter()
    blocks = []
    step = RS_K * SYMBOL
    for off in range(0, len(data), step):
        chunk = data[off : off + step].ljust(step, b"\0")
        m = min(256, RS_K + max(1, math.ceil(RS_K * red)))
        shares = [chunk[j * SYMBOL : (j + 1) * SYMBOL] for j in range(RS_K)]
        repair = zfec.Encoder(RS_K, m).encode(shares, list(range(RS_K, m)))
        blocks.append((m, shares + list(repair)))
    t1 = time.perf_counter()
    keep = keep_fn(sum(m for m, _ in blocks))
    i, ok, out = 0, True, []
    for m, shares in blocks:
        got = [(j, shares[j]) for j in range(m) if keep[i + j]][:RS_K]
        i += m
        if len(got) < RS_K:
            ok = False
            continue
        idx = [j for j, _ in got]
        out.append(b"".join(zfec.Decoder(RS_K, m).decode([s for _, s in got], idx)))
    t2 = time.perf_counter()
    return ok and b"".join(out)[: len(data)] == data, t1 - t0, t2 - t1


def block_sizes(trials: int) -> None:
    print(f"{SYMBOL}-byte symbols, 25% repair, 5% of source symbols lost, {trials} trials")
    print(f"{'block':>8} {'K':>6} | {'enc MB/s':>8} {'dec MB/s':>8}")
    rng = random.Random(1)
    for size in (128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20):
        k = math.ceil(size / SYMBOL)
        te = td = 0.0
        for _ in range(trials):
            data = os.urandom(size)
            t0 = time.perf_counter()
            packets = raptorq.Encoder.with_defaults(data, SYMBOL).get_encoded_packets(
                math.ceil(k * 0.25)
            )
            t1 = time.perf_counter()
            dec = raptorq.Decoder.with_defaults(size, SYMBOL)
            out = None
            for p in packets:
                if int.from_bytes(p[1:4], "big") < k and rng.random() < 0.05:
                    continue
                out = dec.decode(p)
                if out is not None:
                    break
            t2 = time.perf_counter()
            assert out == data, "decode failed"
            te, td = te + t1 - t0, td + t2 - t1
        enc, dec_rate = size * trials / te / 1e6, size * trials / td / 1e6
        print(f"{size >> 10:>6}Ki {k:>6} | {enc:>8.0f} {dec_rate:>8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--sizes", action="store_true", help="RaptorQ speed per block size")
    args = ap.parse_args()
    if args.sizes:
        block_sizes(args.trials)
        return
    data = os.urandom(args.mib * 1024 * 1024)
    mb = len(data) / 1e6
    print(f"{args.mib} MiB messages, {SYMBOL}-byte symbols, {args.trials} trials per row")
    print(
        f"{'loss':>5} {'burst':>5} {'redund':>6} | {'codec':<9} {'recovered':>9} "
        f"{'enc MB/s':>8} {'dec MB/s':>8}"
    )
    for loss, burst in ((0.05, 1), (0.05, 5), (0.05, 20), (0.10, 10)):
        for red in (0.10, 0.25):
            for name, fn in (("raptorq", rq_trial), ("zfec RS", rs_trial)):
                rng = random.Random(1)
                wins, te, td = 0, 0.0, 0.0
                for _ in range(args.trials):
                    ok, e, d = fn(
                        data, red, lambda n, r=rng, lo=loss, b=burst: gilbert(n, r, lo, b)
                    )
                    wins += ok
                    te += e
                    td += d
                print(
                    f"{loss:>5.0%} {burst:>5} {red:>6.0%} | {name:<9} "
                    f"{wins:>4}/{args.trials:<4} {mb * args.trials / te:>8.0f} "
                    f"{mb * args.trials / td:>8.0f}"
                )


if __name__ == "__main__":
    main()
