"""Command-line options from the stage dataclasses: each setting's type, default and help are written once, in
its dataclass (mathsft.generate.Sampling, ClientSettings, mathsft.train_settings.TrainConfig, ...), and a script's
argparse is built from them."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

Settings = TypeVar("Settings")


def _value_type(annotation: Any) -> type:
    """The argparse `type` of a field annotated `int`, `float`, `str` or one of them `| None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        if len(kinds) == 1:
            annotation = kinds[0]
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"no command-line option for a field of type {annotation!r}: give it an int, float, str or bool")


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                            defaults: Mapping[str, Any] | None = None, exclude: Iterable[str] = ()) -> None:
    """Add one --FIELD option per field of dataclass `cls`, but those in `exclude`: the field's type (a bool is a
    --FIELD/--no-FIELD pair), its default (or `defaults[FIELD]`; required when there is none), and the help and
    choices of its metadata."""
    defaults = dict(defaults or {})
    excluded = set(exclude)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = (set(defaults) | excluded) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    # Annotations are strings under `from __future__ import annotations`: resolve them to types.
    annotations = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in excluded:
            continue
        options: dict[str, Any] = {"help": field.metadata.get("help")}
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        default = defaults.get(field.name, field.default)
        if default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = default
        if annotations[field.name] is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _value_type(annotations[field.name])
        parser.add_argument(f"--{field.name}", **options)


def from_args(cls: type[Settings], args: argparse.Namespace, **values: Any) -> Settings:
    """An instance of dataclass `cls`, each field by name: from `values` where given (fields whose options have
    other names), else from the parsed option of the field's name, else the field's default."""
    parsed = vars(args)
    fields = {field.name: values[field.name] if field.name in values else parsed[field.name]
              for field in dataclasses.fields(cls) if field.name in values or field.name in parsed}
    unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**fields)
