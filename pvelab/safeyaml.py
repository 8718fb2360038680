"""The one YAML loader for everything pve-lab reads (stack files, rosters, allocation files, CSV headers).

PyYAML's safe_load still expands aliases (a few hundred bytes of nested `&a [*a, *a]` become gigabytes),
silently keeps the last of two equal keys, and turns unquoted dates, `!!binary` and `!!set` into Python
objects no config key accepts. This loader refuses all of that with one line naming the file and the line:
- anchors and aliases: refused (no config of ours needs them);
- duplicate keys in a mapping: refused;
- tags other than the plain scalar/list/mapping ones (`!!binary`, `!!set`, `!!python/...`, custom `!x`): refused;
- unquoted dates and times stay text (`2026-01-31` is the string '2026-01-31', as the Pulumi CLI reads it);
- nesting deeper than MAX_DEPTH, or a file larger than MAX_BYTES: refused;
- bytes that are not UTF-8: refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, SequenceNode

from .spec import SpecError

MAX_DEPTH = 40
MAX_BYTES = 4 * 1024 * 1024
PLAIN_TAGS = frozenset({
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map",
})


class YamlInputError(SpecError):
    """A file we read is not the plain YAML we accept; one line naming the file and what is wrong."""


class _Refused(Exception):
    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.message = message
        self.mark = mark


class _PlainConstruction:
    """Constructor rules shared by both loaders: plain tags only, no duplicate keys."""

    def construct_object(self, node, deep=False):
        if node.tag not in PLAIN_TAGS:
            shown = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise _Refused(f"the tag {shown} is not allowed (plain text, numbers, true/false, lists and "
                           f"mappings only)", node.start_mark)
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, (MappingNode, SequenceNode)):
                    raise _Refused("a mapping key must be plain text", key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise _Refused(f"duplicate key '{key}' (also on line {seen[key].line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


class _PlainLoader(_PlainConstruction, yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys, exotic tags, dates, or unbounded nesting (pure Python)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"alias '*{event.anchor}' is not allowed (anchors and aliases are refused)", event.start_mark)
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(f"anchor '&{anchor}' is not allowed (anchors and aliases are refused)", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_CLoader = getattr(yaml, "CSafeLoader", None)


class _PlainCLoader(_PlainConstruction, _CLoader or yaml.SafeLoader):  # type: ignore[misc]
    """The same rules on libyaml's parser (several times faster); anchors and depth are checked on its events."""


def _check_events(data: str) -> None:
    """Refuse anchors, aliases and deep nesting by walking the parser's events (libyaml, no tree built)."""
    depth = 0
    for event in yaml.parse(data, Loader=_CLoader):
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"alias '*{event.anchor}' is not allowed (anchors and aliases are refused)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"anchor '&{event.anchor}' is not allowed (anchors and aliases are refused)", event.start_mark)
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


# Unquoted dates and times are text: drop the timestamp resolver (PyYAML keeps resolvers per first character).
_PlainLoader.yaml_implicit_resolvers = _PlainCLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _where(where: str, mark) -> str:
    return f"{where} line {mark.line + 1}" if mark is not None else where


def load_yaml(data: str | bytes, where: str) -> Any:
    """Parse one YAML document; YamlInputError (one line, naming `where`) for anything we do not accept."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise YamlInputError([f"{where}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a config file"])
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise YamlInputError([f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from None
    elif len(data) > MAX_BYTES:
        raise YamlInputError([f"{where}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a config file"])
    loader = None
    try:
        if _CLoader is not None:
            _check_events(data)
            loader = _PlainCLoader(data)
        else:
            loader = _PlainLoader(data)
        return loader.get_single_data()
    except _Refused as exc:
        raise YamlInputError([f"{_where(where, exc.mark)}: {exc.message}"]) from None
    except ConstructorError as exc:
        raise YamlInputError([f"{_where(where, exc.problem_mark)}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YamlInputError([f"{_where(where, mark)}: not valid YAML ({what})"]) from None
    except yaml.YAMLError as exc:
        raise YamlInputError([f"{where}: not valid YAML ({' '.join(str(exc).split())})"]) from None
    except RecursionError:
        raise YamlInputError([f"{where}: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise YamlInputError([f"{where}: a value cannot be read ({' '.join(str(exc).split())[:80]})"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: str | Path, where: str = "") -> str:
    """A UTF-8 text file, or one line naming it (missing, unreadable, not UTF-8, too large)."""
    path = Path(path)
    where = where or path.name
    try:
        if path.stat().st_size > MAX_BYTES:
            raise YamlInputError([f"{where}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a config file"])
        data = path.read_bytes()
    except FileNotFoundError:
        raise YamlInputError([f"{where}: the file '{path}' does not exist"]) from None
    except IsADirectoryError:
        raise YamlInputError([f"{where}: '{path}' is a folder, not a file"]) from None
    except OSError as exc:
        raise YamlInputError([f"{where}: cannot read '{path}' ({exc.strerror or type(exc).__name__})"]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlInputError([f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from None


def read_yaml(path: str | Path, where: str = "") -> Any:
    """read_text + load_yaml."""
    where = where or Path(path).name
    return load_yaml(read_text(path, where), where)
