"""UDP stage 1 (sender): cut an envelope into blocks and protect each with RaptorQ repair symbols.

Why RaptorQ (RFC 6330, as ANSSI's lidi uses): one block spans hundreds of datagrams and any
K(+1 or 2) of its symbols rebuild it, so a burst of losses anywhere in the block costs only its
own length in repair symbols; Reed-Solomon (zfec) is limited to 256 shares a block, so bursts
hit a few blocks hard (see bench/fec_compare.py for the figures behind this choice).

Repeat rounds send *fresh* repair symbols (new encoding symbol ids), not copies, so a receiver
that lost part of a block in round 0 can finish it with any symbols of a later round.

The codec is systematic: a block's first K packets are its own bytes, cut into symbols. The
encoder still computes them (the codec offers no repair-only call); what it saves is on the
receiving side, which copies source symbols into place and decodes only blocks that lost some.

Why worker processes (`EncoderPool`): encoding is most of the sender's work, and the codec holds
the GIL for a whole block (it also builds its encoding plan anew for each block, about half its
time), so an encoding thread only takes turns with the sending one. A worker process encodes
beside the sender on another core. Blocks travel through one shared memory mapping (a memfd that
both sides map, so nothing is left behind if either is killed): the sender reads a block's bytes
into a slot, a worker writes the block's packets beside them, and the pipes carry only fixed-size
slot records. A worker exits when its pipe closes; a pool that fails falls back to encoding in
the sender's own thread, giving the same datagrams.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import mmap
import os
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import raptorq

from .udp_packet import DATA_HEADER, MAX_BLOCK, MAX_SYMBOLS, RQ_ID, SYMBOL_ALIGN, data_header

__all__ = [
    "BLOCK_SIZE",
    "EncodeParams",
    "EncodedBlock",
    "EncoderPool",
    "encode_blocks",
    "encode_message",
    "repair_count",
    "symbol_size",
]

log = logging.getLogger(__name__)

#: bytes of envelope per FEC block: big enough that a burst is a small share of a block, small
#: enough that a block's symbols fit comfortably in memory on both sides; raptorq encodes and
#: decodes fastest per byte around this size (bench/fec_compare.py --sizes)
BLOCK_SIZE = 1024 * 1024


def symbol_size(packet_size: int) -> int:
    """The symbol a configured packet size gives: RaptorQ rounds symbols down to a multiple of 8."""
    return packet_size - packet_size % SYMBOL_ALIGN


@dataclass(frozen=True)
class EncodeParams:
    #: bytes of FEC symbol per datagram, a multiple of 8 (see `symbol_size`)
    symbol: int
    redundancy: float
    rounds: int
    block_size: int = BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.symbol % SYMBOL_ALIGN or self.symbol <= 0:
            raise ValueError(f"symbol size {self.symbol} is not a positive multiple of 8")
        if not self.symbol <= self.block_size <= MAX_BLOCK:
            raise ValueError(f"block size {self.block_size} out of range")
        if -(-self.block_size // self.symbol) > MAX_SYMBOLS:
            raise ValueError("too many symbols a block: raise the packet size")


@dataclass(frozen=True)
class EncodedBlock:
    """One block's datagrams for one round, all of one size: `header` + each of `packets`, or,
    from a worker pool, whole datagrams laid end to end in `wire` (a view into the worker's slot,
    valid until the next block is asked for), which a GSO send takes without any copying."""

    header: bytes
    packets: list[bytes]
    wire: memoryview | None = None
    wire_count: int = 0

    @property
    def count(self) -> int:
        return self.wire_count if self.wire is not None else len(self.packets)

    @property
    def datagram_size(self) -> int:
        if self.wire is not None:
            return len(self.wire) // self.wire_count
        return len(self.header) + len(self.packets[0])

    def datagram(self, i: int) -> bytes | memoryview:
        if self.wire is not None:
            size = self.datagram_size
            return self.wire[i * size : (i + 1) * size]
        return self.header + self.packets[i]

    def buffers(self, burst: range) -> list[bytes | memoryview]:
        """The buffers of datagrams `burst` for one sendmsg (one view when laid end to end)."""
        if self.wire is not None:
            size = self.datagram_size
            return [self.wire[burst.start * size : burst.stop * size]]
        return [part for i in burst for part in (self.header, self.packets[i])]


#: A block may fail to decode at the design loss (below) at most this often.
BLOCK_FAILURE_TARGET = 1e-6


def repair_count(source_symbols: int, redundancy: float) -> int:
    """Repair symbols for a block: the configured share, and more for small blocks.

    A share of K is enough for a large block (25% of 800 symbols absorbs any loss near 20%),
    but not for a small one: a 1 KiB message is one symbol, and 25% of it rounds up to one
    repair, so losing both of its two datagrams (1 in 400 at 5% loss) loses the message. So
    every block also gets enough repairs that it decodes at the design loss, half the loss the
    configured redundancy absorbs in the limit (25% -> 10%), except once in a million blocks.
    That costs a few datagrams per small message and nothing for large ones.
    """
    if redundancy <= 0:
        return 0
    return max(
        1, math.ceil(source_symbols * redundancy), _small_block_repairs(source_symbols, redundancy)
    )


@functools.lru_cache(maxsize=4096)
def _small_block_repairs(k: int, redundancy: float) -> int:
    """Fewest repairs R for which more than R of the K + R datagrams are lost (so the block
    cannot be rebuilt) with probability at most BLOCK_FAILURE_TARGET at the design loss."""
    p = redundancy / (1 + redundancy) / 2
    for r in range(max(1, math.ceil(k * redundancy)), 4 * k + 64):
        if _binomial_tail(k + r, p, r) <= BLOCK_FAILURE_TARGET:
            return r
    return 4 * k + 64


def _binomial_tail(n: int, p: float, r: int) -> float:
    """P(X > r) for X ~ Binomial(n, p), summed in log space (n is at most a few thousand)."""
    if r >= n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for x in range(r + 1, n + 1):
        log_pmf = (
            math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
            + x * log_p + (n - x) * log_q
        )  # fmt: skip
        total += math.exp(log_pmf)
    return total


def _jobs(length: int, params: EncodeParams) -> Iterator[Job]:
    """(round, block, bytes, packets to ask the codec for, packets to skip) of every block."""
    for round_ in range(params.rounds):
        for block in range(-(-length // params.block_size)):
            size = min(params.block_size, length - block * params.block_size)
            k = -(-size // params.symbol)
            r = repair_count(k, params.redundancy)
            # Round n sends K + R new repair symbols, after those of the earlier rounds.
            yield round_, block, size, r + round_ * (k + r), round_ * (k + r)


def _encode(data: bytes, symbol: int, repairs: int, skip: int) -> list[bytes]:
    packets = raptorq.Encoder.with_defaults(data, symbol).get_encoded_packets(repairs)
    return packets[skip:] if skip else packets


def encode_blocks(
    src: BinaryIO,
    length: int,
    transfer: str,
    session: bytes,
    msgno: int,
    resend: bool,
    params: EncodeParams,
    pool: EncoderPool | None = None,
) -> Iterator[EncodedBlock]:
    """The blocks of one message, round after round (reads `src` again for every round); with
    `pool`, encoded by its workers a few blocks ahead of the consumer."""

    def header(round_: int, block: int) -> bytes:
        return data_header(
            session,
            msgno,
            transfer,
            length,
            params.block_size,
            block,
            params.symbol,
            round_,
            resend,
        )

    jobs = _jobs(length, params)
    if pool is not None:
        yield from pool.encode(src, jobs, params, header)
    else:
        yield from _encode_here(src, jobs, params, header)


Job = tuple[int, int, int, int, int]
Header = Callable[[int, int], bytes]


def _encode_here(
    src: BinaryIO, jobs: Iterable[Job], params: EncodeParams, header: Header
) -> Iterator[EncodedBlock]:
    for round_, block, size, repairs, skip in jobs:
        src.seek(block * params.block_size)
        data = src.read(size)
        if len(data) != size:
            raise ValueError("envelope shorter than its announced length")
        yield EncodedBlock(header(round_, block), _encode(data, params.symbol, repairs, skip))


def encode_message(
    src: BinaryIO,
    length: int,
    transfer: str,
    session: bytes,
    msgno: int,
    resend: bool,
    params: EncodeParams,
) -> Iterator[bytes]:
    """Datagrams of one message, round after round, block after block, one bytes each."""
    for block in encode_blocks(src, length, transfer, session, msgno, resend, params):
        for i in range(block.count):
            yield bytes(block.datagram(i))


# -- the worker pool ------------------------------------------------------------------------
#: request: slot offset, block bytes, symbol size, packets to ask for, packets to skip, and the
#: block's datagram header, which the worker writes before each packet
_REQ = struct.Struct(f">QIIII{DATA_HEADER}s")
#: reply: packets written after the block's bytes, and their size (0 packets: the codec failed)
_REP = struct.Struct(">II")


class PoolBroken(Exception):
    """A worker died or answered nonsense: the pool is closed, the sender encodes itself."""


class EncoderPool:
    """Worker processes that encode blocks for one sender (see the module's docstring)."""

    def __init__(self, params: EncodeParams, workers: int) -> None:
        k = -(-params.block_size // params.symbol)
        per_round = k + repair_count(k, params.redundancy)
        slot = params.block_size + per_round * (DATA_HEADER + RQ_ID + params.symbol)
        self.slot_size = -(-slot // mmap.PAGESIZE) * mmap.PAGESIZE
        self.slots = 3 * workers  # each worker encodes one block while two wait or are sent
        self.fd = os.memfd_create("zonegate-udp-encode", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.slot_size * self.slots)
        self.map = mmap.mmap(self.fd, self.slot_size * self.slots)
        self.view = memoryview(self.map)
        self.lock = threading.Lock()  # one message at a time; a second encodes in its thread
        self.params = params  # the slots are sized for these
        self.broken = False
        self.workers: list[subprocess.Popen[bytes]] = []
        for _ in range(workers):
            args = [str(self.fd), str(self.slot_size * self.slots)]
            self.workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", __name__, *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    pass_fds=(self.fd,),
                )
            )

    def encode(
        self, src: BinaryIO, jobs: Iterator[Job], params: EncodeParams, header: Header
    ) -> Iterator[EncodedBlock]:
        if self.broken or params != self.params or not self.lock.acquire(blocking=False):
            yield from _encode_here(src, jobs, params, header)
            return
        pending: deque[tuple[int, Job]] = deque()
        free = deque(range(self.slots))
        waiting: list[Job] = []  # taken from `jobs`, not yet handed to a worker
        try:
            for job in jobs:
                waiting.append(job)
                if not free:
                    yield self._collect(pending, free, params, header)
                slot = free.popleft()
                self._submit(src, slot, job, params, header)
                pending.append((slot, waiting.pop()))
            while pending:
                yield self._collect(pending, free, params, header)
        except PoolBroken as e:
            log.warning("UDP encoder pool failed (%s): encoding in the sender's thread", e)
            left = [job for _slot, job in pending] + waiting
            pending.clear()
            self.close()
            yield from _encode_here(src, itertools.chain(left, jobs), params, header)
        finally:
            with contextlib.suppress(PoolBroken):  # abandoned mid-message: settle the replies
                while pending:
                    self._reply(*pending.popleft(), params)
            self.lock.release()

    def _worker_of(self, slot: int) -> subprocess.Popen[bytes]:
        if not self.workers:
            raise PoolBroken("closed")
        return self.workers[slot % len(self.workers)]

    def _submit(
        self, src: BinaryIO, slot: int, job: Job, params: EncodeParams, header: Header
    ) -> None:
        round_, block, size, repairs, skip = job
        at = slot * self.slot_size
        src.seek(block * params.block_size)
        if src.readinto(self.view[at : at + size]) != size:  # type: ignore[attr-defined]
            raise ValueError("envelope shorter than its announced length")
        worker = self._worker_of(slot)
        assert worker.stdin is not None
        try:
            request = _REQ.pack(at, size, params.symbol, repairs, skip, header(round_, block))
            worker.stdin.write(request)
            worker.stdin.flush()
        except OSError as e:
            raise PoolBroken(f"worker {worker.pid}: {e}") from None

    def _reply(self, slot: int, job: Job, params: EncodeParams) -> int:
        """The number of packets the worker wrote for `job`, checked against what it owes."""
        worker = self._worker_of(slot)
        assert worker.stdout is not None
        raw = worker.stdout.read(_REP.size)
        if raw is None or len(raw) != _REP.size:
            raise PoolBroken(f"worker {worker.pid} ended")
        count, size = _REP.unpack(raw)
        _round, _block, length, repairs, skip = job
        owed = (-(-length // params.symbol) + repairs - skip, DATA_HEADER + RQ_ID + params.symbol)
        if (count, size) != owed:
            raise PoolBroken(f"worker {worker.pid} answered {count} packets of {size} bytes")
        return count

    def _collect(
        self,
        pending: deque[tuple[int, Job]],
        free: deque[int],
        params: EncodeParams,
        header: Header,
    ) -> EncodedBlock:
        slot, job = pending[0]
        count = self._reply(slot, job, params)
        pending.popleft()  # only now: a job whose reply failed is encoded again, here
        size = DATA_HEADER + RQ_ID + params.symbol
        at = slot * self.slot_size + job[2]
        free.append(slot)  # written again only when the consumer asks for a later block
        wire = self.view[at : at + count * size]
        return EncodedBlock(header(job[0], job[1]), [], wire, count)

    def close(self) -> None:
        self.broken = True
        workers, self.workers = self.workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.stdin.close()  # type: ignore[union-attr]
        for worker in workers:
            try:
                worker.wait(5)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
            with contextlib.suppress(OSError):
                worker.stdout.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            os.close(self.fd)  # the mapping stays until the last view of it is gone
        self.fd = -1


def _worker(fd: int, size: int) -> None:
    """A pool's worker: requests on stdin, packets into the shared slots, replies on stdout."""
    area = mmap.mmap(fd, size)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        raw = inp.read(_REQ.size)
        if len(raw) != _REQ.size:
            return  # the sender closed the pipe or died
        at, length, symbol, repairs, skip, header = _REQ.unpack(raw)
        try:
            packets = _encode(area[at : at + length], symbol, repairs, skip)
            joined = header + header.join(packets)  # each packet after its header
            area[at + length : at + length + len(joined)] = joined
            out.write(_REP.pack(len(packets), len(header) + len(packets[0])))
        except Exception:  # a reply of no packets: the pool gives up, the sender encodes
            out.write(_REP.pack(0, 0))
        out.flush()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
