"""Line numbers and duplicate keys for a YAML document.

`yaml.safe_load` gives the values but forgets where they came from, and it silently keeps the
last of two equal mapping keys, which would let a typo-duplicated `to:` quietly re-route a flow.
This module composes the same text into PyYAML's node graph (`yaml.compose` with the
SafeLoader: it builds nodes and constructs no objects, so it is safe on untrusted text) and
records, for every path of mapping keys and sequence indices, the line of the key and of the
value, plus every duplicated key in document order. The config loader uses it to point each
error at a line.

Pure: reads no files, imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

#: One step into a document: a mapping key (as written in the YAML source) or a sequence index.
PathPart = str | int
#: A path from the document root, e.g. ``("flows", 1, "from")``.
YamlPath = tuple[PathPart, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class DuplicateKey:
    """A mapping key written twice; the second occurrence is the one reported.

    Why: safe_load keeps the last value without a word, so the loader must refuse instead.
    """

    path: YamlPath  # path of the duplicated key, e.g. ("gateway", "name")
    line: int  # 1-based line of the second occurrence
    first_line: int  # 1-based line of the first occurrence


@dataclass(frozen=True)
class _Where:
    """Lines (1-based) of one path's key (or sequence item) and of its value."""

    key_line: int
    value_line: int


@dataclass(frozen=True)
class Positions:
    """Where each path of a composed document sits in the text.

    Paths not recorded (content reached through an alias a second time, or keys brought in by a
    `<<` merge) fall back to the nearest recorded ancestor, so a lookup always lands on a line
    that is at least near the problem.
    """

    root_line: int | None
    _where: dict[YamlPath, _Where] = field(default_factory=dict, repr=False)
    duplicates: tuple[DuplicateKey, ...] = ()

    def _nearest(self, path: YamlPath) -> tuple[YamlPath, _Where] | None:
        for end in range(len(path), 0, -1):
            prefix = path[:end]
            where = self._where.get(prefix)
            if where is not None:
                return prefix, where
        return None

    def key_line(self, path: YamlPath) -> int | None:
        """Line of the key (or sequence item) at `path`; the root's line for the empty path."""
        found = self._nearest(path)
        if found is None:
            return self.root_line
        prefix, where = found
        # For an ancestor, the line where its value starts is closer than the ancestor's key.
        return where.key_line if prefix == path else where.value_line

    def value_line(self, path: YamlPath) -> int | None:
        """Line where the value at `path` starts (nearest recorded ancestor's value if absent)."""
        found = self._nearest(path)
        if found is None:
            return self.root_line
        return found[1].value_line


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def compose_positions(text: str) -> Positions:
    """Compose `text` (one YAML document) and record positions and duplicate keys.

    Raises `yaml.YAMLError` (usually a `yaml.MarkedYAMLError` with a line) on a syntax error.
    An empty document gives `Positions(root_line=None)`.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return Positions(root_line=None)
    where: dict[YamlPath, _Where] = {}
    duplicates: list[DuplicateKey] = []
    # Each node is walked once: aliases may share a node many times (or even contain
    # themselves), and walking every reference would let a "billion laughs" text explode.
    seen: set[int] = set()

    def walk(node: yaml.Node, path: YamlPath) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                ident = (key_node.tag, key_node.value)
                child = (*path, key_node.value)
                if ident in first:
                    duplicates.append(DuplicateKey(child, _line(key_node), first[ident]))
                    continue
                first[ident] = _line(key_node)
                where[child] = _Where(_line(key_node), _line(value_node))
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                where[child] = _Where(_line(item), _line(item))
                walk(item, child)

    walk(root, ())
    return Positions(root_line=_line(root), _where=where, duplicates=tuple(duplicates))
