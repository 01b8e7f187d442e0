"""The ferry directory's reader, on real files: what it hands the agent is what the writer put."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from zonegate.transfer.ferry import FerryReader, FerryWriter
from zonegate.transfer.link import Arrival
from zonegate.zones.config import Flow, Policy, Transport


def test_an_arrival_carries_the_sha256_of_what_came_off_the_ferry(tmp_path: Path) -> None:
    """The receiver keeps that digest beside the envelope: damage in its spool later goes to
    corrupt/ (the disk), not quarantine/ (the sender). Before, a ferry arrival had none."""
    ferry = tmp_path / "ferry"
    flow = Flow("import", "internet", "internal", "gw", "rcv", Transport("ferry", str(ferry)),
                Policy(), 0)  # fmt: skip
    scratch = tmp_path / "spool" / "tmp" / "link"
    scratch.mkdir(parents=True)
    envelope = tmp_path / "envelope"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one copy block
    envelope.write_bytes(data)
    transfer = "0123456789abcdef0123456789abcdef"
    writer = FerryWriter(ferry)
    assert writer.send_envelope(envelope, transfer, "import", "gw", False, threading.Event())
    reader = FerryReader(ferry, flow, scratch, 1 << 30)
    arrivals = [a for a in reader.poll(0) if isinstance(a, Arrival)]
    reader.close()
    assert [a.transfer for a in arrivals] == [transfer]
    got = arrivals[0]
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.size == len(data)
    assert (got.directory / "envelope").read_bytes() == data
