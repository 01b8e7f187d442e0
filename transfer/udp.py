"""The udp transport: registers the one-way UDP+RaptorQ link with the link contract.

Stages, in data-flow order: udp_encode (blocks + FEC) -> udp_pace (token bucket) -> udp_send
on the sending side; udp_recv (socket drain) -> udp_decode (sans-I/O state machine) ->
udp_store (disk, Arrivals) on the receiving side; udp_packet is the datagram format.
"""

from __future__ import annotations

from .link import register_transport
from .udp_recv import kernel_rcvbuf_errors
from .udp_send import UdpLinkSender
from .udp_store import UdpEnvelopeReceiver

__all__ = ["UdpEnvelopeReceiver", "UdpLinkSender", "kernel_rcvbuf_errors"]

register_transport("udp", UdpLinkSender, UdpEnvelopeReceiver)
