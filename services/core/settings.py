"""The one loader of every setting: environment variables parsed into frozen dataclasses, one per concern.

A setting is a dataclass field declared with `setting(...)`: its variable, its default and what it means live in
the field's metadata, so the class is both the configuration and its documentation (the README's settings table
is generated from the same declarations by scripts/gen-settings-table). Processes call `load` at their entry
point only and pass the result down; nothing below reads the environment.

One parser per type, chosen from the field's annotation:
- int: a whole number. "10" and also "10.0" (a float that is whole, as YAML and templating tools render numbers);
  "10.5" is refused rather than cut.
- float: a finite number ("nan" and "inf" are refused).
- durations: a field whose name ends in `_ms` or `_s` (not `_per_s`, a rate) is a number in that unit, never
  negative: an integer for milliseconds, and for seconds an integer or a number as the field's type says.
- bool: true/false, 1/0, yes/no, on/off, any case.
- str: the text, surrounding blanks removed.
- tuple[str, ...]: a comma-separated list, blanks around items and empty items dropped.
- bytes: a secret, as given (see `file_env`: it may also come from a file, whose surrounding blanks are removed).
An unset or empty variable gives the default; a value the parser refuses stops the process at start with a
ConfigError naming the variable and the expected type.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# The metadata keys of a setting field and of a nested concern.
_SETTING = "rtask_setting"
_NESTED = "rtask_nested_prefix"
_CONTEXT = "rtask_nested_help"


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


@dataclass(frozen=True)
class Setting:
    """What a field's metadata says about its variable."""

    env: str
    help: str
    # Another variable naming a file that holds the value (used when `env` is unset), e.g. RTASK_JWT_SECRET_FILE.
    file_env: str = ""
    # `env` names a file whose content (stripped) is the value, rather than holding the value itself.
    from_file: bool = False
    # The loader's default for a field the constructor requires (e.g. a generated worker id).
    factory: Callable[[], Any] | None = None
    # The default as the table shows it, when the field's own default says less (a derived value, per process).
    shown_default: str = ""


def setting(
    env: str,
    default: Any = MISSING,
    help: str = "",
    *,
    file_env: str = "",
    from_file: bool = False,
    factory: Callable[[], Any] | None = None,
    shown_default: str = "",
    repr: bool = True,
) -> Any:
    """A dataclass field read from the variable `env` (default: `default`; no default: required)."""
    if not help:
        raise TypeError(f"setting {env} needs a help text")
    meta = {_SETTING: Setting(env, help, file_env, from_file, factory, shown_default)}
    return dataclasses.field(default=default, repr=repr, metadata=meta)


def nested(prefix: str = "", default_factory: Any = MISSING, *, help: str = "") -> Any:
    """A field holding another concern whose variables are named `prefix` + their own ("" for the same names);
    help, when given, says what the concern's variables are about under this prefix."""
    return dataclasses.field(default_factory=default_factory, metadata={_NESTED: prefix, _CONTEXT: help})


# --- parsers: (variable name, raw text) -> value, ConfigError naming the variable otherwise ------------------------


def parse_int(name: str, raw: str) -> int:
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise ConfigError(f"{name} must be an integer, got {raw!r}")
    return int(number)


def parse_float(name: str, raw: str) -> float:
    try:
        number = float(raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    return number


def _non_negative(parse: Callable[[str, str], T], name: str, raw: str, expected: str) -> T:
    try:
        value = parse(name, raw)
    except ConfigError:
        value = None
    if value is None or value < 0:  # type: ignore[operator]
        raise ConfigError(f"{name} must be a duration in {expected}, got {raw!r}")
    return value


def parse_duration_ms(name: str, raw: str) -> int:
    return _non_negative(parse_int, name, raw, "milliseconds (an integer, 0 or more)")


def parse_whole_seconds(name: str, raw: str) -> int:
    return _non_negative(parse_int, name, raw, "seconds (an integer, 0 or more)")


def parse_duration_s(name: str, raw: str) -> float:
    return _non_negative(parse_float, name, raw, "seconds (a number, 0 or more)")


def parse_bool(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def parse_str(name: str, raw: str) -> str:
    return raw.strip()


def parse_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_secret(name: str, raw: str) -> bytes:
    """As given (a secret from a file has its surrounding blanks removed when read)."""
    return raw.encode()


def _unwrap_optional(kind: Any) -> Any:
    """int | None -> int (an optional setting is None when unset)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def parser_for(field_name: str, kind: Any) -> Callable[[str, str], Any]:
    """The one parser for a field of this type (and unit, for durations)."""
    kind = _unwrap_optional(kind)
    if kind is bool:
        return parse_bool
    # A rate (`_per_s`) is a number, not a duration.
    seconds = field_name.endswith("_s") and not field_name.endswith("_per_s")
    if kind is int:
        if field_name.endswith("_ms"):
            return parse_duration_ms
        return parse_whole_seconds if seconds else parse_int
    if kind is float:
        return parse_duration_s if seconds else parse_float
    if kind is str:
        return parse_str
    if kind is bytes:
        return parse_secret
    if typing.get_origin(kind) is tuple and typing.get_args(kind) in ((str, ...),):
        return parse_list
    raise TypeError(f"no parser for settings of type {kind!r} ({field_name})")


TYPE_NAMES: dict[Callable[[str, str], Any], str] = {
    parse_int: "integer",
    parse_float: "number",
    parse_duration_ms: "milliseconds",
    parse_duration_s: "seconds",
    parse_whole_seconds: "seconds (integer)",
    parse_bool: "true/false",
    parse_str: "text",
    parse_list: "comma-separated list",
    parse_secret: "secret",
}


# --- declarations and the loader -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """One variable as a concern declares it: for the loader and for the generated table."""

    env: str
    field_name: str
    parse: Callable[[str, str], Any]
    setting: Setting
    # The default value (MISSING: required).
    default: Any
    # What the enclosing concern is about, for a nested one's variables ("" otherwise).
    context: str = ""

    @property
    def meaning(self) -> str:
        return f"{self.context}: {self.setting.help}" if self.context else self.setting.help

    @property
    def type_name(self) -> str:
        return "file name" if self.setting.from_file else TYPE_NAMES[self.parse]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _base_of(f: dataclasses.Field[Any], base: Any, kind: type) -> Any:
    """The instance a nested concern takes its defaults from (None: its own declared defaults).

    A concern whose default is its class's plain instance gives None: its fields' declared defaults are used, not
    the values its __post_init__ derived from them (a derived default must follow the variables it derives from).
    """
    if base is not None:
        return getattr(base, f.name)
    if f.default_factory is kind or (default := _default_of(f)) is MISSING:
        return None
    return default


def declarations(cls: type, prefix: str = "", base: Any = None, context: str = "") -> Iterator[Declared]:
    """Every variable `cls` reads, with nested concerns (their prefix added), in declaration order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        default = getattr(base, f.name) if base is not None else f.default
        if (meta := f.metadata.get(_SETTING)) is not None:
            yield Declared(prefix + meta.env, f.name, parser_for(f.name, hints[f.name]), meta, default, context)
        elif (inner := f.metadata.get(_NESTED)) is not None:
            kind = _unwrap_optional(hints[f.name])
            yield from declarations(kind, prefix + inner, _base_of(f, base, kind), f.metadata[_CONTEXT] or context)


def _read_file(name: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"{name} cannot be read: {exc}") from exc


def _raw(env: Mapping[str, str], name: str, meta: Setting) -> str:
    """The variable's text ("" when unset), from the file it (or its file variable) names where declared so."""
    raw = env.get(name, "")
    if meta.from_file and raw.strip():
        content = _read_file(name, raw.strip())
        if not content:
            raise ConfigError(f"{name} ({raw.strip()}) is empty")
        return content
    if not raw.strip() and meta.file_env and (path := env.get(meta.file_env, "").strip()):
        return _read_file(meta.file_env, path)
    return raw


def load(
    cls: type[T],
    env: Mapping[str, str],
    *,
    prefix: str = "",
    base: Any = None,
    defaults: Mapping[str, Any] | None = None,
    **given: Any,
) -> T:
    """An instance of `cls` from `env`.

    base: an instance whose values are the defaults (a nested concern's default). defaults: per-process defaults
    by variable name, over the declared ones (e.g. {"RTASK_PORT": 50051}). given: fields set by the caller.
    """
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given or not f.init:
            continue
        meta: Setting | None = f.metadata.get(_SETTING)
        if meta is not None:
            name = prefix + meta.env
            raw = _raw(env, name, meta)
            if raw.strip():
                values[f.name] = parser_for(f.name, hints[f.name])(name, raw)
            elif defaults is not None and name in defaults:
                values[f.name] = defaults[name]
            elif base is not None:
                values[f.name] = getattr(base, f.name)
            elif meta.factory is not None:
                values[f.name] = meta.factory()
            elif f.default is MISSING and f.default_factory is MISSING:
                either = f" or {meta.file_env}" if meta.file_env else ""
                raise ConfigError(f"{name}{either} is required")
        elif (inner := f.metadata.get(_NESTED)) is not None:
            kind = _unwrap_optional(hints[f.name])
            values[f.name] = load(kind, env, prefix=prefix + inner, base=_base_of(f, base, kind), defaults=defaults)
    try:
        return cls(**values, **given)
    except ConfigError:
        raise
    except ValueError as exc:  # a concern's own check that does not name its variables: say which they are
        raise ConfigError(f"{prefix + '_*' if prefix else cls.__name__}: {exc}") from exc


@contextmanager
def refused_at_start(program: str) -> Iterator[None]:
    """Around an entry point's loads: a refused setting ends the process with its message alone (exit status 2)."""
    try:
        yield
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
