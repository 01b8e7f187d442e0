"""UDP stage 1 (sender): cut an envelope into blocks and protect each with RaptorQ repair symbols.

Why RaptorQ (RFC 6330, as ANSSI's lidi uses): one block spans hundreds of datagrams and any
K(+1 or 2) of its symbols rebuild it, so a burst of losses anywhere in the block costs only its
own length in repair symbols; Reed-Solomon (zfec) is limited to 256 shares a block, so bursts
hit a few blocks hard (see bench/fec_compare.py for the figures behind this choice).

Repeat rounds send *fresh* repair symbols (new encoding symbol ids), not copies, so a receiver
that lost part of a block in round 0 can finish it with any symbols of a later round.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import raptorq

from .udp_packet import data_datagram

__all__ = ["BLOCK_SIZE", "EncodeParams", "encode_message", "repair_count"]

#: bytes of envelope per FEC block: big enough that a burst is a small share of a block, small
#: enough that a block's symbols fit comfortably in memory on both sides
BLOCK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class EncodeParams:
    symbol: int
    redundancy: float
    rounds: int
    block_size: int = BLOCK_SIZE


def repair_count(source_symbols: int, redundancy: float) -> int:
    """Repair symbols for a block; at least one whenever redundancy is asked for at all."""
    if redundancy <= 0:
        return 0
    return max(1, math.ceil(source_symbols * redundancy))


def encode_message(
    src: BinaryIO,
    length: int,
    transfer: str,
    session: bytes,
    msgno: int,
    resend: bool,
    params: EncodeParams,
) -> Iterator[bytes]:
    """Datagrams of one message, round after round, block after block (reads `src` per round)."""
    for round_ in range(params.rounds):
        src.seek(0)
        for block in range(-(-length // params.block_size)):
            data = src.read(params.block_size)
            if not data:
                raise ValueError("envelope shorter than its announced length")
            k = -(-len(data) // params.symbol)
            r = repair_count(k, params.redundancy)
            enc = raptorq.Encoder.with_defaults(data, params.symbol)
            if round_ == 0:
                packets = enc.get_encoded_packets(r)
            else:
                # Round n sends K + R new repair symbols, after those of the earlier rounds.
                packets = enc.get_encoded_packets(r + round_ * (k + r))[
                    k + r + (round_ - 1) * (k + r) :
                ]
            for payload in packets:
                yield data_datagram(
                    session,
                    msgno,
                    transfer,
                    length,
                    params.block_size,
                    block,
                    params.symbol,
                    round_,
                    resend,
                    payload,
                )
