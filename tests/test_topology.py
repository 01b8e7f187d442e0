"""The three-tier topology: the shipped example loads, each broken variant is refused with its own
message naming file, line and key, routes go through the tiers, and the views show it all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import zg

from zonegate.zones.config import ConfigError
from zonegate.zones.topology import (
    Topology,
    TopologyError,
    load_topology,
    route,
    routing_table,
)
from zonegate.zones.topology_view import render_tree, to_dot

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "topology.yaml"

DISTRICTS_ZH = [
    "黄浦区司法局", "卢湾区司法局", "徐汇区司法局", "长宁区司法局", "静安区司法局",
    "普陀区司法局", "闸北区司法局", "虹口区司法局", "杨浦区司法局", "闵行区司法局",
    "宝山区司法局", "嘉定区司法局", "浦东新区司法局", "金山区司法局", "松江区司法局",
    "青浦区司法局", "南汇区司法局", "奉贤区司法局", "崇明县司法局",
]  # fmt: skip


@pytest.fixture(scope="module")
def example() -> Topology:
    return load_topology(EXAMPLE)


def variant(tmp_path: Path, *edits: tuple[str, str], append: str = "") -> tuple[Path, str]:
    """The shipped example with exact text edits (each must apply once), written to tmp_path."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"edit target not unique: {old!r}"
        text = text.replace(old, new)
    text += append
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


def refusal(path: Path) -> TopologyError | ConfigError:
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    return info.value


# -- the example ------------------------------------------------------------------------------


def test_example_is_accepted_and_has_the_bureau_structure(example: Topology) -> None:
    by_kind: dict[str, list[str]] = {}
    for node in example.nodes:
        by_kind.setdefault(node.kind, []).append(node.zh)
        assert node.zh and node.en
    assert sorted(by_kind["district-bureau"]) == sorted(DISTRICTS_ZH)
    assert len(by_kind["prison"]) >= 3
    assert len(by_kind["labour-camp"]) >= 2
    assert len(by_kind["judicial-office"]) >= 5
    assert by_kind["notary-office"] and by_kind["legal-aid-centre"]
    assert [n.name for n in example.nodes if n.tier == 1] == ["municipal-bureau"]
    for kind in ("prison-bureau", "labour-bureau", "college"):
        assert example.node(kind if kind != "college" else "cadre-college").tier == 2
    assert {z.name for z in example.zones} == {"internal", "government", "internet"}
    protocols = {e.protocol for e in example.endpoints()}
    assert protocols == {"sip", "h323"}
    video = next(c for c in example.conferences if c.kind == "video")
    assert set(video.nodes) == {
        "municipal-bureau",
        "prison-bureau",
        "labour-bureau",
        "cadre-college",
    }
    phone = next(c for c in example.conferences if c.kind == "telephone")
    assert sum(1 for n in phone.nodes if example.node(n).kind == "district-bureau") == 19


def test_model_is_frozen(example: Topology) -> None:
    with pytest.raises(AttributeError):
        example.nodes[0].tier = 3  # type: ignore[misc]


def test_cli_check_accepts_the_example() -> None:
    r = zg("topology", "check", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert "ok (49 nodes" in r.stdout


# -- routing ----------------------------------------------------------------------------------


def test_tier3_report_reaches_tier1_through_its_tier2_node(example: Topology) -> None:
    path = route(example, "xujiahui-jo", "municipal-bureau")
    assert [n.name for n in path] == ["xujiahui-jo", "district-xuhui", "municipal-bureau"]
    assert [n.tier for n in path] == [3, 2, 1]


def test_route_between_branches_goes_through_the_common_ancestor(example: Topology) -> None:
    path = [n.name for n in route(example, "xujiahui-jo", "tilanqiao-prison")]
    assert path == [
        "xujiahui-jo", "district-xuhui", "municipal-bureau", "prison-bureau", "tilanqiao-prison"
    ]  # fmt: skip
    assert [n.name for n in route(example, "prison-bureau", "prison-bureau")] == ["prison-bureau"]
    with pytest.raises(KeyError):
        route(example, "xujiahui-jo", "no-such-node")


def test_routing_table_per_gateway(example: Topology) -> None:
    office = routing_table(example, "xujiahui-jo-gov-gw")
    # A judicial office sends everything to its district bureau's gateway.
    assert set(office) == {n.name for n in example.nodes} - {"xujiahui-jo"}
    assert set(office.values()) == {"district-xuhui-gov-gw"}
    district = routing_table(example, "district-xuhui-gov-gw")
    assert district["xujiahui-jo"] == "xujiahui-jo-gov-gw"
    assert district["municipal-bureau"] == "municipal-bureau-gov-gw"
    assert district["tilanqiao-prison"] == "municipal-bureau-gov-gw"
    top = routing_table(example, "municipal-bureau-gov-gw")
    assert top["tilanqiao-prison"] == "prison-bureau-gov-gw"
    assert top["xujiahui-jo"] == "district-xuhui-gov-gw"
    # An intranet gateway has no uplink: it forwards nothing across tiers.
    assert routing_table(example, "district-xuhui-intra-gw") == {}


# -- refusals: each broken variant from the issue, with its own message ------------------------

UPLINK_ZONES = ("{from: district-xuhui-gov-gw, to: municipal-bureau-gov-gw}",
                "{from: district-xuhui-gov-gw, to: municipal-bureau-intra-gw}")  # fmt: skip


def _new_node(name: str, zones: str, gateways: str) -> str:
    return (
        f"  - name: {name}\n    zh: 测试单位{name}\n    en: Test unit {name}\n    tier: 2\n"
        f"    kind: affiliated-unit\n    zones: [{zones}]\n    gateways:\n{gateways}"
    )


CASES = {
    "link-joins-two-zones": (
        [UPLINK_ZONES],
        "",
        "district-xuhui-gov-gw, to: municipal-bureau-intra-gw",
        "uplinks[7].to",
        "uplink joins two zones",
    ),
    "endpoint-joins-two-zones": (
        [
            (
                "address: 10.20.1.10, zone: government, bridge: mb-video-mcu}",
                "address: 10.20.1.10, zone: internal, bridge: mb-video-mcu}",
            )
        ],
        "",
        "name: pb-video-terminal",
        "nodes[1].endpoints[0].bridge",
        "endpoint joins two zones",
    ),
    "no-path-to-tier-1": (
        [("  - {from: chengqiao-jo-gov-gw, to: district-chongming-gov-gw}\n", "")],
        "",
        "- name: chengqiao-jo",
        "nodes[42].name",
        "node chengqiao-jo has no path to tier 1",
    ),
    "flow-without-gateway": (
        [
            (
                "\nconferences:",
                "  - {name: waitan-jo-report, node: waitan-jo, from: internal, to: government}\n"
                "\nconferences:",
            )
        ],
        "",
        "name: waitan-jo-report",
        None,
        "which has no gateway in that zone",
    ),
    "duplicate-name": (
        [("    zh: 上海市周浦监狱\n", "    zh: 上海市提篮桥监狱\n")],
        "",
        "- name: zhoupu-prison",
        "nodes[26].zh",
        "duplicate Chinese node name '上海市提篮桥监狱'",
    ),
    "duplicate-address": (
        [
            (
                "{name: zhoupu-prison-gov-gw, zone: government, address: 10.20.26.2}",
                "{name: zhoupu-prison-gov-gw, zone: government, address: 10.20.25.2}",
            )
        ],
        "",
        "name: zhoupu-prison-gov-gw",
        "nodes[26].gateways[1].address",
        "duplicate address 10.20.25.2",
    ),
    "endpoint-zone-not-at-node": (
        [
            (
                "address: 10.20.4.10, zone: government, bridge: mb-phone-bridge}",
                "address: 10.20.4.10, zone: internet, bridge: mb-phone-bridge}",
            )
        ],
        "",
        "name: co-phone",
        "nodes[4].endpoints[0].zone",
        "endpoint co-phone is in zone 'internet', which node correction-office does not have",
    ),
    "video-conference-no-shared-zone": (
        [
            (
                "\nuplinks:",
                _new_node(
                    "kiosk",
                    "internet",
                    "      - {name: kiosk-inet-gw, zone: internet, address: 198.51.100.200}\n",
                )
                + "\nuplinks:\n  - {from: kiosk-inet-gw, to: municipal-bureau-inet-gw}",
            ),
            (
                "nodes: [municipal-bureau, prison-bureau, labour-bureau, cadre-college]",
                "nodes: [municipal-bureau, prison-bureau, labour-bureau, cadre-college, kiosk]",
            ),
        ],
        "",
        "nodes: [municipal-bureau, prison-bureau, labour-bureau, cadre-college, kiosk]",
        "conferences[0].nodes",
        "a video conference between nodes that share no zone",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_broken_variant_is_refused_with_file_line_key(case: str, tmp_path: Path) -> None:
    edits, append, at, key, message = CASES[case]
    path, text = variant(tmp_path, *edits, append=append)
    error = refusal(path)
    assert isinstance(error, TopologyError)
    assert len(error.errors) == 1, [str(e) for e in error.errors]
    assert error.file == str(path)
    assert error.line == line_of(text, at) + (1 if case == "duplicate-name" else 0)
    if key is not None:
        assert error.key == key
    assert message in error.message
    # The command line says the same, as FILE:LINE: KEY: MESSAGE, and exits 1.
    r = zg("topology", "check", str(path))
    assert r.returncode == 1
    assert f"{path}:{error.line}: {error.key}: " in r.stderr
    assert message in r.stderr


def test_each_refusal_has_its_own_message(tmp_path: Path) -> None:
    messages = set()
    for index, (edits, append, _at, _key, _message) in enumerate(CASES.values()):
        folder = tmp_path / str(index)
        folder.mkdir()
        path, _ = variant(folder, *edits, append=append)
        first = refusal(path).message
        # Strip the names so only the kind of problem is compared.
        messages.add(first.split(":")[0].split(" (")[0].split(" is in zone")[0][:30])
    assert len(messages) == len(CASES)


def test_duplicate_node_name_is_refused_first(tmp_path: Path) -> None:
    path, text = variant(tmp_path, ("  - name: zhoupu-prison\n", "  - name: tilanqiao-prison\n"))
    error = refusal(path)
    assert error.key == "nodes[26].name"
    assert error.line == line_of(text, "- name: tilanqiao-prison", nth=2)
    assert "duplicate node name 'tilanqiao-prison' (first at line" in error.message


def test_flow_refusal_names_the_flow_key(tmp_path: Path) -> None:
    edits, append, _at, _key, _message = CASES["flow-without-gateway"]
    path, _text = variant(tmp_path, *edits, append=append)
    error = refusal(path)
    assert error.key.startswith("flows[") and error.key.endswith("].from")
    assert "internal" in error.message and "waitan-jo" in error.message


def test_all_problems_are_listed_earliest_first(tmp_path: Path) -> None:
    path, _text = variant(
        tmp_path,
        UPLINK_ZONES,
        ("  - name: zhoupu-prison\n", "  - name: tilanqiao-prison\n"),
    )
    error = refusal(path)
    assert isinstance(error, TopologyError)
    lines = [e.line for e in error.errors]
    assert lines == sorted(lines)
    assert len(error.errors) >= 2
    r = zg("topology", "check", "--json", str(path))
    assert r.returncode == 1
    result = json.loads(r.stdout)["results"][0]
    assert not result["ok"] and len(result["errors"]) == len(error.errors)


def test_typo_key_and_duplicate_key(tmp_path: Path) -> None:
    path, text = variant(
        tmp_path, ("  - name: cadre-college\n", "  - name: cadre-college\n    tire: 2\n")
    )
    error = refusal(path)
    assert error.key == "nodes[3].tire" and "unknown key 'tire'" in error.message
    assert error.line == line_of(text, "tire: 2")
    path, text = variant(
        tmp_path, ("  - name: cadre-college\n", "  - name: cadre-college\n    name: college\n")
    )
    error = refusal(path)
    assert "duplicate key 'name'" in error.message
    assert error.line == line_of(text, "name: college")


# -- views ------------------------------------------------------------------------------------


def test_show_is_a_tree_with_zones_and_endpoints() -> None:
    r = zg("topology", "show", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for zh in DISTRICTS_ZH:
        assert any(zh in line for line in lines), zh
    office = next(i for i, line in enumerate(lines) if line.lstrip().startswith("xujiahui-jo "))
    district = next(
        i for i, line in enumerate(lines) if line.lstrip().startswith("district-xuhui ")
    )
    indent = len(lines[office]) - len(lines[office].lstrip())
    assert indent > len(lines[district]) - len(lines[district].lstrip())
    assert any("endpoint mb-video-mcu: video MCU, H.323 10.20.0.10:1720" in x for x in lines)
    assert any("zones: internal, government, internet" in x for x in lines)


def test_dot_has_zone_clusters_tiers_and_conference_links(example: Topology) -> None:
    dot = to_dot(example)
    for zone in ("internal", "government", "internet"):
        assert f'subgraph "cluster_{zone}"' in dot
    assert dot.count("rank=same") == 3
    assert '"mb-video-mcu" -> "prison-bureau-gov-gw" [style=dashed' in dot
    assert '"district-xuhui-gov-gw" -> "xujiahui-jo-gov-gw" [dir=back' in dot
    assert "上海市监狱管理局" in dot
    assert render_tree(example).count("\n") > 100


@pytest.mark.parametrize("fmt", ["dot", "svg", "png"])
def test_render_writes_the_picture(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / f"topology.{fmt}"
    r = zg("topology", "render", str(EXAMPLE), "--format", fmt, "--output", str(out))
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 800 and height > 1500
    elif fmt == "svg":
        text = data.decode()
        assert "<svg" in text and "徐汇区司法局" in text and "cluster_government" in text
    else:
        assert data.decode().startswith("digraph topology {")


def test_readme_shows_the_committed_picture() -> None:
    root = EXAMPLE.parent.parent
    assert "docs/topology.png" in (root / "README.md").read_text()
    assert (root / "docs" / "topology.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "words", [["topology"], ["topology", "check"], ["topology", "show"], ["topology", "render"],
              ["probe"]],
)  # fmt: skip
def test_help_for_the_new_commands(words: list[str]) -> None:
    r = zg(*words, "--help")
    assert r.returncode == 0
    assert "usage: zonegate" in r.stdout
