"""RFC 5424 syslog lines for a SIEM, and a sender that can never hold up a transfer.

Why our own formatter: the stdlib ``SysLogHandler`` writes the old BSD (RFC 3164) format, which
has no structured data, no year and no sub-second time; a SIEM correlating two gateways' records
needs all three. Why our own non-blocking sender: the syslog copy of a checkpoint is a second
witness, not the record itself, so a slow or dead syslog daemon must cost a counted failure,
never a blocked agent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any

__all__ = ["SD_ID", "SyslogSender", "checkpoint_rfc5424", "record_rfc5424"]

#: Structured-data ID: name@private-enterprise-number. 32473 is the number RFC 5612 reserves
#: for documentation; an operator with their own PEN can rewrite it in the SIEM.
SD_ID = "zonegate@32473"
APP_NAME = "zonegate"
#: Facility 13, "log audit" (RFC 5424 table 1).
FACILITY_AUDIT = 13
_SEVERITY = {"ok": 6, "info": 6, "refused": 5, "error": 3}
_BOM = "\ufeff"


def _sd_value(value: object) -> str:
    """A PARAM-VALUE: UTF-8 with '"', '\\' and ']' escaped (RFC 5424 section 6.3.3)."""
    text = str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: object, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the NILVALUE '-'."""
    text = "".join(c for c in str(value or "") if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def _line(
    severity: int,
    time: str,
    host: str,
    procid: str,
    msgid: str,
    params: Mapping[str, object],
    sd_id: str,
    msg: str,
) -> str:
    sd = "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items() if v is not None)
    return (
        f"<{FACILITY_AUDIT * 8 + severity}>1 {time} {_header_field(host, 255)} {APP_NAME} "
        f"{_header_field(procid, 128)} {_header_field(msgid, 32)} [{sd_id}{sd}] {_BOM}{msg}"
    )


def record_rfc5424(record: Mapping[str, Any]) -> str:
    """One audit record as one RFC 5424 line (no newline).

    The structured data carries the fields a SIEM searches on; MSG is the record's own
    canonical JSON, so the line also carries everything needed to re-check the record's hash.
    """
    message = record.get("message") or {}
    who = record.get("who") or {}
    params = {
        "seq": record["seq"],
        "zone": record.get("zone"),
        "outcome": record["outcome"],
        "msg_id": message.get("id"),
        "flow": message.get("flow"),
        "flow_seq": message.get("seq"),
        "sha256": message.get("sha256"),
        "size": message.get("size"),
        "person": who.get("person"),
        "role": who.get("role"),
        "system": who.get("system"),
        "reason": record.get("reason"),
        "hash": record["hash"],
    }
    msg = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _line(
        _SEVERITY.get(record["outcome"], 6),
        record["time"],
        record["gateway"],
        record["agent"],
        record["event"],
        params,
        SD_ID,
        msg,
    )


def checkpoint_rfc5424(checkpoint: Mapping[str, Any], agent: str) -> str:
    """A signed checkpoint as an RFC 5424 line, MSGID ``checkpoint``."""
    params = {k: checkpoint[k] for k in ("size", "root", "key", "sig")}
    msg = json.dumps(checkpoint, sort_keys=True, separators=(",", ":"))
    return _line(6, checkpoint["time"], checkpoint["gateway"], agent, "checkpoint", params,
                 "zonegate-checkpoint@32473", msg)  # fmt: skip


class SyslogSender:
    """Sends datagrams to a syslog daemon: a unix socket path, or ``HOST:PORT`` over UDP.

    Non-blocking: a full socket buffer or an absent daemon drops the line and counts it in
    ``failures``. The caller decides what a failure means (a metric, not a stop).
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.failures = 0
        self.sent = 0
        if address.startswith("/"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._target: str | tuple[str, int] = address
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._target = (host, int(port))
        self._sock.setblocking(False)

    def send(self, line: str) -> bool:
        try:
            self._sock.sendto(line.encode("utf-8"), self._target)
        except OSError:
            self.failures += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()
