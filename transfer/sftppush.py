"""The SFTP push transport: the sender uploads envelopes to a remote SFTP drop point.

For sites that only offer SFTP. The server's host key must already be in the configured
known_hosts file (an unknown or changed key is refused, never learnt), login is by key only,
and each envelope is uploaded under a hidden temporary name and then renamed, so the reading
side only ever sees complete files. The receiving gateway reads the directory the SFTP server
writes into exactly as a ferry directory (`FerryReader`): it never writes there.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from pathlib import Path

import paramiko

from ..zones.config import Flow
from .ferry import HEARTBEAT_FILE, FerryReader, final_name
from .link import register_transport

__all__ = ["SftpPushSender", "parse_sftp_endpoint"]

log = logging.getLogger("zonegate.sftppush")
_ENDPOINT = re.compile(r"sftp://([^@]+)@(\[[^\]]+\]|[^:/]+):(\d+)(/.*)")
_CHUNK = 1024 * 1024


def parse_sftp_endpoint(endpoint: str) -> tuple[str, str, int, str]:
    """``sftp://USER@HOST:PORT/DIR`` -> (user, host, port, dir); the config checked the form."""
    match = _ENDPOINT.fullmatch(endpoint)
    if match is None:
        raise ValueError(f"not an sftp endpoint: {endpoint!r}")
    user, host, port, directory = match.groups()
    return user, host.strip("[]"), int(port), directory


class SftpPushSender:
    """Sending end: one SSH connection, re-established on failure; never listens."""

    def __init__(self, flow: Flow) -> None:
        t = flow.transport
        if t.identity is None or t.known_hosts is None:
            raise ValueError(f"flow {flow.name}: an sftp sender needs identity and known_hosts")
        self.user, self.host, self.port, self.directory = parse_sftp_endpoint(t.endpoint)
        self.identity = t.identity
        self.known_hosts = t.known_hosts
        self.client: paramiko.SSHClient | None = None
        self.sftp: paramiko.SFTPClient | None = None
        self._events: list[str] = []
        self._connect()

    @property
    def connected(self) -> bool:
        if self.sftp is None:
            self._connect()
        return self.sftp is not None

    def link_events(self) -> list[str]:
        events, self._events = self._events, []
        return events

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                self.port,
                username=self.user,
                key_filename=str(self.identity),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
                banner_timeout=10,
                auth_timeout=10,
            )
            self.sftp = client.open_sftp()
        except (OSError, paramiko.SSHException) as e:
            client.close()
            log.warning("sftp drop point %s:%s unreachable: %s", self.host, self.port, e)
            return
        self.client = client
        self._events.append("up")

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
        was_up = self.sftp is not None
        self.client = self.sftp = None
        if was_up:
            self._events.append("down")

    def _upload(self, name: str, path: Path | None, body: bytes, stop: threading.Event) -> bool:
        while not stop.is_set():
            if self.sftp is None:
                self._connect()
                if self.sftp is None:
                    stop.wait(1.0)
                    continue
            tmp = f"{self.directory}/.tmp-{name}"
            try:
                with self.sftp.open(tmp, "wb") as dst:
                    dst.set_pipelined(True)
                    if path is None:
                        dst.write(body)
                    else:
                        with open(path, "rb") as src:
                            while chunk := src.read(_CHUNK):
                                if stop.is_set():
                                    break
                                dst.write(chunk)
                if stop.is_set():
                    with contextlib.suppress(OSError):
                        self.sftp.remove(tmp)
                    return False
                self.sftp.posix_rename(tmp, f"{self.directory}/{name}")
                return True
            except (OSError, paramiko.SSHException, EOFError) as e:
                log.warning("sftp upload of %s failed, reconnecting: %s", name, e)
                self._drop()
        return False

    def send_envelope(
        self, path: Path, transfer: str, flow: str, sender: str, resend: bool, stop: threading.Event
    ) -> bool:
        return self._upload(final_name(transfer, resend), path, b"", stop)

    def send_heartbeat(
        self, flow: str, sender: str, last_seq: int, sent_at: str, stop: threading.Event
    ) -> bool:
        import json

        body = json.dumps({"flow": flow, "sender": sender, "last_seq": last_seq, "time": sent_at})
        return self._upload(HEARTBEAT_FILE, None, body.encode(), stop)

    def close(self) -> None:
        self._drop()


def _reader(flow: Flow, scratch: Path, max_length: int) -> FerryReader:
    if flow.transport.drop_dir is None:
        raise ValueError(f"flow {flow.name}: the sftp receiving side needs drop_dir")
    return FerryReader(flow.transport.drop_dir, flow, scratch, max_length)


register_transport("sftp", SftpPushSender, _reader)
