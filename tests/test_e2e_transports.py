"""The spine's end-to-end test over the other transports (acceptance 4): ferry directory and SFTP
push to a real OpenSSH server. Real processes; files of 0 B to 64 MiB arrive exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import GatewayPair, metric_value, wait_for
from sshd import SshServer
from test_e2e import _assert_exactly_once, _make_sources

from zonegate.gateways.submit import submit_files

N_FILES = 200  # as the spine's end-to-end test


def _transports(kind: str, tmp_path: Path, server: SshServer | None) -> dict[str, dict]:
    if kind == "ferry":
        t = {"kind": "ferry", "endpoint": str(tmp_path / "ferry")}
        return {"internet-gw": t, "internal-gw": t}
    assert server is not None
    sender = {
        "kind": "sftp",
        "endpoint": server.endpoint,
        "identity": str(server.identity),
        "known_hosts": str(server.known_hosts),
    }
    receiver = {"kind": "sftp", "endpoint": server.endpoint, "drop_dir": str(server.drop)}
    return {"internet-gw": sender, "internal-gw": receiver}


@pytest.mark.parametrize("kind", ["ferry", "sftp"])
def test_files_arrive_exactly_once_over(kind: str, tmp_path: Path, request) -> None:
    server = request.getfixturevalue("sshd") if kind == "sftp" else None
    pair = GatewayPair(tmp_path / "gw", transports=_transports(kind, tmp_path, server))
    ferry = tmp_path / "ferry" if kind == "ferry" else server.drop  # type: ignore[union-attr]
    try:
        expected = _make_sources(tmp_path / "src", N_FILES, seed=4)
        pair.start()
        submit_files(pair.outbox, "import", [tmp_path / "src"])
        wait_for(lambda: pair.receiver_spool.depth("delivered") >= N_FILES, 300, "deliveries")
        _assert_exactly_once(pair, expected)
        text = pair.metrics("receiver")
        assert metric_value(
            text, "zonegate_messages_total", flow="import", stage="deliver", outcome="delivered"
        ) == len(expected)
        # The reader never writes, renames or deletes in the ferry directory: every envelope
        # is still there under its final name, and no temporary name is left (checked once the
        # sender has stopped: a heartbeat it is writing has a temporary name for a moment).
        pair.stop()
        names = sorted(os.listdir(ferry))
        envelopes = [n for n in names if n.endswith(".zge")]
        assert len(envelopes) == N_FILES, names[:5]
        assert not [n for n in names if n.startswith(".tmp-")]
    except BaseException:
        print(pair.logs())
        raise
    finally:
        pair.stop()


def test_sftp_refuses_a_server_whose_host_key_is_not_known(tmp_path: Path, sshd: SshServer) -> None:
    from zonegate.transfer.sftppush import SftpPushSender
    from zonegate.zones.config import Flow, Policy, Transport

    wrong = tmp_path / "wrong_known_hosts"
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other}\n")
    t = Transport("sftp", sshd.endpoint, identity=sshd.identity, known_hosts=wrong)
    flow = Flow("import", "internet", "internal", "a", "b", t, Policy(), 0)
    link = SftpPushSender(flow)
    assert not link.connected, "connected to a server whose host key does not match"
    link.close()
