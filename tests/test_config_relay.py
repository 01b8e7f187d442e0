"""Config of relayed flows (`via`): the route, the one-hop links, and the new errors."""

from __future__ import annotations

from pathlib import Path

from test_config import MIRROR_PEER, VALID, expect_error, gw, line_of, replace_once, write

from zonegate.zones.config import load_gateway_config

__all__ = ["gw"]

VIA = """\
    via:
      - gateway: mirror-gw
        transport:
          kind: zmq
          endpoint: tcp://127.0.0.1:5611
"""


def _relayed(text: str = VALID) -> str:
    text = replace_once(text, "metrics:\n", MIRROR_PEER + "metrics:\n")
    return replace_once(text, "    resend_window: 60 MiB\n", "    resend_window: 60 MiB\n" + VIA)


def test_via_gives_route_and_one_hop_links(gw: Path) -> None:
    cfg = load_gateway_config(write(gw, _relayed()))
    flow = cfg.flow("import")
    assert flow.route == ("internet-gw", "mirror-gw", "internal-gw")
    out = flow.link_from("internet-gw")
    assert (out.sender, out.receiver, out.transport.endpoint, out.via) == (
        "internet-gw",
        "mirror-gw",
        "tcp://127.0.0.1:5611",
        (),
    )
    last = flow.link_into("internal-gw")
    assert (last.sender, last.transport.endpoint) == ("mirror-gw", "tcp://127.0.0.1:5601")
    assert cfg.relayed_flows() == ()
    direct = cfg.flow("publish")
    assert direct.link_into("internet-gw") == direct


def test_relay_gateway_sees_the_flow_as_relayed(gw: Path) -> None:
    text = _relayed()
    text = text[: text.index("  - name: publish\n")]  # a relay needs no flow of its own
    # The same flow, seen from a gateway that is only its relay.
    text = replace_once(text, "  name: internet-gw\n", "  name: mirror-gw\n")
    text = replace_once(text, "  - name: mirror-gw\n", "  - name: internet-gw\n")
    cfg = load_gateway_config(write(gw, text))
    assert [f.name for f in cfg.relayed_flows()] == ["import"]
    assert [f.name for f in cfg.outgoing_flows()] == []


def test_unknown_relay_gateway(gw: Path) -> None:
    text = replace_once(_relayed(), "      - gateway: mirror-gw\n", "      - gateway: ghost-gw\n")
    expect_error(
        gw,
        text,
        line_of(text, "gateway: ghost-gw"),
        "flows[0].via[0].gateway",
        "unknown relay gateway 'ghost-gw'",
    )


def test_relay_already_on_route(gw: Path) -> None:
    text = replace_once(
        _relayed(), "      - gateway: mirror-gw\n", "      - gateway: internal-gw\n"
    )
    expect_error(
        gw,
        text,
        line_of(text, "gateway: internal-gw"),
        "flows[0].via[0].gateway",
        "relay 'internal-gw' is already on the route of flow 'import'",
    )


def test_via_item_needs_transport(gw: Path) -> None:
    text = _relayed()
    text = replace_once(
        text,
        "        transport:\n          kind: zmq\n          endpoint: tcp://127.0.0.1:5611\n",
        "",
    )
    expect_error(
        gw,
        text,
        line_of(text, "- gateway: mirror-gw"),
        "flows[0].via[0].transport",
        "missing required key 'transport'",
    )


def test_batch_is_read_and_off_unless_asked(gw: Path) -> None:
    assert load_gateway_config(write(gw, VALID)).flow("import").batch is False
    text = replace_once(
        VALID, "    resend_window: 60 MiB\n", "    resend_window: 60 MiB\n    batch: true\n"
    )
    assert load_gateway_config(write(gw, text)).flow("import").batch is True


def test_batch_needs_a_direct_flow(gw: Path) -> None:
    text = replace_once(
        _relayed(), "    resend_window: 60 MiB\n", "    resend_window: 60 MiB\n    batch: true\n"
    )
    expect_error(
        gw,
        text,
        line_of(text, "batch: true"),
        "flows[0].batch",
        "batch needs a direct flow",
    )
