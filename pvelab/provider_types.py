"""Check recorded resource inputs against the provider SDK's own property types.

The engine would reject a misspelled input only on a real `pulumi up`; offline, this walks each input
(wire names, camelCase) through the SDK's resource class and its nested output types, so an unknown key,
a list where a scalar belongs, or a string where a number belongs is caught in tests and in `plan`.
"""
from __future__ import annotations

import collections.abc
import importlib
import inspect
import typing
from functools import lru_cache
from typing import Any, Optional

import pulumi

from .evaluate import SECRET_SIG, SIG_KEY, Record

PACKAGES = {"proxmoxve": "pulumi_proxmoxve", "command": "pulumi_command", "random": "pulumi_random",
            "tls": "pulumi_tls"}


def resource_class(type_token: str) -> Optional[type]:
    """`proxmoxve:ceph/pool:Pool` -> pulumi_proxmoxve.ceph.Pool (None for components and providers)."""
    parts = type_token.split(":")
    if len(parts) != 3 or parts[0] not in PACKAGES:
        return None
    package = importlib.import_module(PACKAGES[parts[0]])
    module_path = parts[1].split("/")[0]
    module = package if module_path == "index" else getattr(package, module_path, None)
    if module is None:
        try:
            module = importlib.import_module(f"{PACKAGES[parts[0]]}.{module_path}")
        except ImportError:
            return None
    return getattr(module, parts[2], None)


@lru_cache(maxsize=None)
def _properties(cls: type) -> dict[str, Any]:
    """wire name -> type annotation, from the class's `@pulumi.getter(name=...)` properties."""
    result = {}
    module_globals = vars(inspect.getmodule(cls))
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, property) and hasattr(value.fget, "_pulumi_name"):
                try:
                    hint = typing.get_type_hints(value.fget, module_globals).get("return", Any)
                except Exception:  # an annotation the SDK itself cannot resolve: accept any value
                    hint = Any
                result[value.fget._pulumi_name] = hint
    return result


def _strip(tp: Any) -> Any:
    """Output[Optional[X]] -> X (keeping containers)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is pulumi.Output:
            tp = typing.get_args(tp)[0]
        elif origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else Any
        else:
            return tp


def _check(value: Any, tp: Any, path: str, problems: list[str]) -> None:
    if isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG:
        value = value.get("value")
    if value is None or tp is Any or isinstance(value, pulumi.output.Unknown) or value == "04da6b54-80e4-46f7-96ec-b56ff0331ba9":
        return
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (list, collections.abc.Sequence, typing.Sequence):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        (item,) = typing.get_args(tp) or (Any,)
        for i, v in enumerate(value):
            _check(v, item, f"{path}[{i}]", problems)
        return
    if origin in (dict, collections.abc.Mapping, typing.Mapping):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return
        _, item = typing.get_args(tp) or (Any, Any)
        for k, v in value.items():
            _check(v, item, f"{path}.{k}", problems)
        return
    if inspect.isclass(tp) and _properties(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object ({tp.__name__}), got {type(value).__name__}")
            return
        props = _properties(tp)
        for k, v in value.items():
            if k not in props:
                problems.append(f"{path}.{k}: not an argument of {tp.__name__} (known: {', '.join(sorted(props))})")
            else:
                _check(v, props[k], f"{path}.{k}", problems)
        return
    scalar = {str: str, int: (int, float), float: (int, float), bool: bool}.get(tp)
    if scalar is not None:
        ok = isinstance(value, scalar) and not (tp in (int, float) and isinstance(value, bool))
        if tp is int and isinstance(value, float) and not value.is_integer():
            ok = False
        if not ok:
            problems.append(f"{path}: expected {tp.__name__}, got {value!r}")


def check_record(record: Record) -> list[str]:
    cls = resource_class(record.type)
    if cls is None or not record.custom:
        return []
    props = _properties(cls)
    problems: list[str] = []
    for key, value in record.inputs.items():
        if key.startswith("__"):
            continue
        if key not in props:
            problems.append(f"{record.name}: input {key!r} is not an argument of {record.type}")
            continue
        _check(value, props[key], f"{record.name}.{key}", problems)
    return problems


def check_all(records: list[Record]) -> list[str]:
    problems: list[str] = []
    for r in records:
        problems += check_record(r)
    return problems
