"""One declaration per setting: its name, its run-config and node-config keys, type, default and help.

A `Schema` generates from these declarations what used to be written by hand for each setting: the argparse
flags, the reading of a run config, a node config or a message (kebab-case keys, typed, with a one-line
error for a bad value), the writing back of scalar entries, and the defaults of the typed record built from
them (`RoundSettings`, `SiteDataConfig`). `tests/core/test_core_schema.py` checks `pyproject.toml`'s run
config against the schemas.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from core.errors import ConfigError

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def to_bool(raw: Any) -> bool:
    """true/false, yes/no, 1/0 (any case) or a bool."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in _TRUE + _FALSE:
        raise ValueError("expected true or false")
    return text in _TRUE


def to_int(raw: Any) -> int:
    """A whole number (2.0 and "2.0" are 2; 2.5 is refused)."""
    if isinstance(raw, bool):
        raise ValueError("expected a whole number")
    try:
        if isinstance(raw, str):
            raw = raw.strip()
            raw = int(raw) if raw.lstrip("+-").isdigit() else float(raw)
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return int(raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("expected a whole number") from None


@dataclass(frozen=True)
class Setting:
    """One setting.

    Attributes:
        name: the field of the typed record (snake_case).
        kind: turns a raw value (TOML scalar, message entry, command-line string) into the typed value.
        default: the default, defined here only.
        help: one line for `--help` and the docs.
        run_key: its key in the run config and in the server's messages (None: not there).
        node_key: its key in a site's node config (None: not there).
        flag: its command-line flag (None: `--` + run_key or node_key).
        choices: the allowed values, when they are few.
        text: how one command-line string becomes a raw value for `kind` (e.g. "1-3,none" -> its specs); None: the
            string itself.
        repeat: the flag may be given several times; the raw values of all occurrences are joined into one list.
        metavar: what `--help` shows for the flag's value (None: the flag's name in capitals).

    A setting of kind `to_bool` is a switch on the command line: its flag takes no value and sets the opposite of
    the default (`--fedrep`; `--no-feature-cache` for a setting that is on by default).
    """

    name: str
    kind: Callable[[Any], Any]
    default: Any
    help: str
    run_key: str | None = None
    node_key: str | None = None
    flag: str | None = None
    choices: tuple[Any, ...] = ()
    text: Callable[[str], Any] | None = None
    repeat: bool = False
    metavar: str | None = None

    def convert(self, raw: Any, key: str | None = None, shown: str | None = None) -> Any:
        """The typed value of `raw`; a bad one is a one-line ConfigError naming the key (and `shown`, the text the
        user wrote, when it is not `raw` itself)."""
        shown = repr(raw) if shown is None else shown
        try:
            value = self.kind(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key or self.run_key or self.name} = {shown} is not a valid value ({exc})") from None
        if self.choices and value not in self.choices:
            raise ConfigError(f"{key or self.run_key or self.name} must be one of "
                              f"{', '.join(map(str, self.choices))}, got {shown}")
        return value

    @property
    def option(self) -> str:
        """The command-line flag."""
        return self.flag or f"--{self.run_key or self.node_key}"


class Schema:
    """The settings of one typed record, by field name."""

    def __init__(self, *settings: Setting) -> None:
        self.settings = {s.name: s for s in settings}

    def __getitem__(self, name: str) -> Setting:
        return self.settings[name]

    def default(self, name: str) -> Any:
        return self.settings[name].default

    def keys(self, where: str = "run") -> dict[str, str]:
        """Field name -> its key in the `where` ("run" or "node") config, for the settings that have one."""
        return {s.name: key for s in self.settings.values() if (key := getattr(s, f"{where}_key"))}

    def read(self, config: Mapping[str, Any], where: str = "run") -> dict[str, Any]:
        """Typed values of the keys `config` has (others are ignored; missing ones are left to the defaults)."""
        return {name: self.settings[name].convert(config[key], key)
                for name, key in self.keys(where).items() if key in config}

    def write(self, values: Mapping[str, Any], where: str = "run") -> dict[str, Any]:
        """Config entries (kebab-case keys, scalars: a typed value that is a str subclass becomes a plain str)."""
        return {key: str(values[name]) if isinstance(values[name], str) else values[name]
                for name, key in self.keys(where).items() if name in values}

    def add_arguments(self, parser: argparse.ArgumentParser, names: Iterable[str], inherit: bool = False,
                      check: bool = True) -> None:
        """Command-line flags of `names`; `inherit=True` leaves them at None when not given (a preset decides).

        `check=False` keeps the raw text until `from_args` converts it, so that a bad value is the command's
        one-line error (exit 2 through `core.cli.run_command`) rather than argparse's usage message.
        """
        for name in names:
            s = self.settings[name]
            default = None if inherit else s.default
            shown = "the preset's" if inherit else s.default
            if s.kind is to_bool:
                parser.add_argument(s.option, dest=name, action="store_const", const=not s.default, default=default,
                                    help=f"{s.help} (default: {shown})")
                continue
            kind = {"type": lambda raw, s=s: _argparse_convert(s, raw)} if check and not s.repeat else {}
            parser.add_argument(s.option, dest=name, default=default, help=f"{s.help} (default: {shown})",
                                metavar=s.metavar or s.option.lstrip("-").upper(),
                                action="append" if s.repeat else "store", **kind)

    def from_args(self, args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
        """The typed values the command line gave for `names` (None ones left out); a bad one is a ConfigError."""
        return {name: _from_text(self.settings[name], getattr(args, name))
                for name in names if getattr(args, name, None) is not None}


def _from_text(setting: Setting, raw: Any) -> Any:
    """The typed value of a flag's raw value: its text (or, for a repeatable flag, the list of its texts)."""
    texts = list(raw) if setting.repeat else [raw]
    parts = []
    for text in texts:
        try:
            parts.append(setting.text(text) if setting.text and isinstance(text, str) else text)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{setting.option} = {text!r} is not a valid value ({exc})") from None
    if setting.repeat:
        value = [v for part in parts for v in (part if setting.text else [part])]
    else:
        value = parts[0]
    shown = repr(" ".join(map(str, texts))) if setting.repeat or setting.text else None
    return setting.convert(value, setting.option, shown)


def _argparse_convert(setting: Setting, raw: str) -> Any:
    try:
        return setting.convert(raw, setting.option)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
