"""Typed config plumbing: nested dataclasses from plain dicts (a YAML file, dotted
``KEY=VALUE`` overrides), each value checked against its field's annotation, every error
naming the dotted field and the bad value."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml


def check(cond: bool, name: str, value: Any, expected: str) -> None:
    """A section's ``__post_init__`` check: ``ValueError`` naming the field unless ``cond``."""
    if not cond:
        raise ValueError(f"config field '{name}' = {value!r}: expected {expected}")


def set_fields(data: dict[str, Any], section: str, fields: dict[str, Any]) -> None:
    """``data[section][key] = value`` for each field of a config dict; a number coerced to the
    field's type (int fields round); an unknown key names the section."""
    for key, value in fields.items():
        if key not in data[section]:
            raise ValueError(f"'{key}' is not a {section}.* config field")
        current = data[section][key]
        if is_number(value) and is_number(current):
            value = int(round(value)) if isinstance(current, int) else float(value)
        data[section][key] = value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; int is accepted where float is expected."""
    origin = typing.get_origin(tp)
    if is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config field '{name}' = {value!r}: expected a mapping")
        return from_dict(tp, value, name + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"config field '{name}' = {value!r}: expected one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, name)
            except ValueError:
                continue
        raise ValueError(f"config field '{name}' = {value!r}: expected {tp}")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"config field '{name}' = {value!r}: expected null")
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field '{name}' = {value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config field '{name}' = {value!r}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field '{name}' = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config field '{name}' = {value!r}: expected a string")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config field '{name}' = {value!r}: expected a mapping")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {
            coerce(k, key_tp, f"{name} key"): coerce(v, val_tp, f"{name}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field '{name}' = {value!r}: expected a list")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(v, item_tp, f"{name}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from ``data`` (nested sections too); an unknown key
    or a value of the wrong type raises naming the dotted field."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys here: {sorted(known)})"
        )
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.synth.noise_rate=0.4"`` -> ``("data.synth.noise_rate", 0.4)`` (YAML-typed value)."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. data.synth.seed=1")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
