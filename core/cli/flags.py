"""Option types, and flags built from config dataclasses (TRL's ``HfArgumentParser`` pattern).

A config dataclass is the one place where a setting's default, help and check live: each field
carries ``metadata={"help": ...}`` (and ``"choices"`` where the values are a fixed set), and the
dataclass's ``__post_init__`` raises :class:`core.errors.ConfigError` naming a bad value.
:func:`add_config_flags` turns fields into flags: type, default, choices and help come from the
field, and each value is checked by the config itself while the command line is parsed, so a
bad one exits 2 naming the flag before anything loads. :func:`config_values` gives the parsed
values back as keyword arguments of the config. (transformers' ``HfArgumentParser`` does the
same, but importing transformers takes seconds that ``python -m core --help`` should not wait.)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from core.errors import ConfigError


# -- option types: a bad value is an argparse error (exit 2) before anything loads ------------
def _number(kind, test, what):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value"
    return parse


positive_int = _number(int, lambda v: v > 0, "a whole number > 0")
nonnegative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
nonnegative_float = _number(float, lambda v: v >= 0, ">= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "between 0 and 1")
_any_int = _number(int, lambda v: True, "a whole number")
_any_float = _number(float, lambda v: True, "a number")


def comma_list(text: str) -> list[str]:
    """``a, b,c`` -> ``["a", "b", "c"]`` (blank items dropped)."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


_CONVERTERS: dict[Any, Callable[[str], Any]] = {int: _any_int, float: _any_float, str: str,
                                               list[str]: comma_list}


# -- flags from config fields -------------------------------------------------------------------
def _converter(hint) -> Callable[[str], Any]:
    """How to read a field of type ``hint`` from the command line (``X | None`` reads an X)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        return _CONVERTERS[hint]
    except (KeyError, TypeError):
        raise TypeError(f"no command-line type for a field of type {hint!r}") from None


def _checked(config: type, name: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert``, then the config's own check of the value (its ``__post_init__``)."""
    def parse(text: str):
        value = convert(text)
        try:
            config()
        except ConfigError:  # a bad IMPRESSIONIST_* setting, not this flag: the command says so
            return value
        try:
            config(**{name: value})
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _dest(config: type, name: str) -> str:
    return f"{config.__name__}.{name}"


def add_config_flags(parser: argparse.ArgumentParser, config: type,
                     flags: dict[str, str | None]) -> None:
    """Add a flag for each named field of the dataclass ``config``.

    Args:
        parser: the (sub)command's parser.
        config: a dataclass whose fields carry ``metadata={"help": ...}``.
        flags: field name -> flag (None: ``--field-name``). A ``bool`` field that defaults to
            False becomes a switch.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Demo:
    ...     epochs: float = field(default=2.0, metadata={"help": "passes over the data"})
    >>> p = argparse.ArgumentParser()
    >>> add_config_flags(p, Demo, {"epochs": None})
    >>> Demo(**config_values(p.parse_args(["--epochs", "3"]), Demo))
    Demo(epochs=3.0)
    """
    hints = typing.get_type_hints(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name, flag in flags.items():
        f, hint = fields[name], hints[name]
        flag = flag or "--" + name.replace("_", "-")
        default = _default(f)
        text = f.metadata.get("help")
        if text is None:
            raise TypeError(f"{config.__name__}.{name} has no help metadata")
        if hint is bool and default is False:
            parser.add_argument(flag, dest=_dest(config, name), action="store_true", help=text)
            continue
        choices = f.metadata.get("choices")
        convert = _converter(hint)
        parser.add_argument(
            flag, dest=_dest(config, name), default=default, choices=choices,
            type=convert if choices else _checked(config, name, convert),
            metavar=None if choices else flag.lstrip("-").replace("-", "_").upper(),
            help=text if default is None or "default" in text else f"{text} (default: {default})")


def config_values(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The values of ``config``'s flags in ``args``, as keyword arguments of ``config``."""
    prefix = config.__name__ + "."
    return {dest[len(prefix):]: value for dest, value in vars(args).items()
            if dest.startswith(prefix)}
