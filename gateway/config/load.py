"""Reading a config: YAML with ``${ENV}`` values, every problem named with its file and field."""

from __future__ import annotations

import enum
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
import yaml

from gateway.config.fields import DEFAULT_CONFIG_PATH, ConfigError, FieldValueError
from gateway.config.providers import ModelConfig, ProviderConfig
from gateway.config.settings import (
    AuthConfig,
    ConsoleConfig,
    GatewayConfig,
    JobsConfig,
    RedisConfig,
    ServerConfig,
    WebhooksConfig,
    raw_references,
)
from gateway.config.stores import ImageStoreConfig
from schemas.sustainability import SiteFactors

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, path: str, environ: dict[str, str], errors: list[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of the parsed YAML; a missing VAR goes to ``errors``."""
    if isinstance(value, dict):
        return {key: _expand(item, f"{path}.{key}", environ, errors) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, f"{path}[{index}]", environ, errors) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        errors.append(f"environment variable {name} is not set (needed at `{path}`)")
        return ""

    return _ENV_RE.sub(substitute, value)


_AT = re.compile(r" - at `\$([^`]*)`$")


def _convert_at(value: Any, kind: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` alone as ``kind``; an error is noted with its full path from the file's root.

    msgspec elides dict keys (``$.providers[...]``) and names a ``__post_init__`` error at
    its struct, so each part is converted by itself and the path is rebuilt here. A bad choice
    (a ``Literal`` or an enum) says which values are allowed.
    """
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        inner = match.group(1) if match else ""
        message = message[: match.start()] if match else message
        if isinstance(exc.__cause__, FieldValueError):
            inner += f".{exc.__cause__.field}"
        choices = _choices(kind)
        if choices and not inner:
            message += f" (one of: {', '.join(repr(choice) for choice in choices)})"
        errors.append(f"{message} - at `{path}{inner}`")
        return None


def _unwrap(kind: Any) -> Any:
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _choices(kind: Any) -> list[Any]:
    """The values a ``Literal`` or an enum allows (through ``Annotated`` and ``| None``); [] for any other type."""
    kind = _unwrap(kind)
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [member.value for member in kind]
    if get_origin(kind) in (Union, types.UnionType):
        return [choice for arg in get_args(kind) if arg is not type(None) for choice in _choices(arg)]
    return []


def _collect(value: Any, kind: Any, path: str, errors: list[str]) -> bool:
    """Check ``value`` as ``kind`` field by field, so that every error in it is reported at once.

    msgspec stops at the first error of a struct; here each field of a struct (each item of a list,
    each value of a dict, the member a tagged union's ``kind`` picks) is checked by itself, then the
    whole part is converted once its fields are sound (for its own constraints and ``__post_init__``).
    """
    before = len(errors)
    inner = _unwrap(kind)
    origin = get_origin(inner)
    if _is_struct(inner) and isinstance(value, dict):
        config = inner.__struct_config__
        fields = {field.encode_name: field for field in msgspec.structs.fields(inner)}
        if config.forbid_unknown_fields:
            for key in value:
                if key not in fields and key != config.tag_field:
                    errors.append(f"Object contains unknown field `{key}` - at `{path}`")
        for name, field in fields.items():
            if name in value:
                _collect(value[name], field.type, f"{path}.{name}", errors)
            elif field.required:
                errors.append(f"Object missing required field `{name}` - at `{path}`")
    elif origin in (Union, types.UnionType) and value is not None:
        members = [arg for arg in get_args(inner) if arg is not type(None)]
        tagged = [member for member in members if _is_struct(member) and member.__struct_config__.tag_field]
        if tagged and isinstance(value, dict):
            tag_field = tagged[0].__struct_config__.tag_field
            by_tag = {member.__struct_config__.tag: member for member in tagged}
            tag = value.get(tag_field)
            if tag in by_tag:
                _collect(value, by_tag[tag], path, errors)
            else:
                allowed = ", ".join(repr(name) for name in by_tag)
                errors.append(f"`{tag_field}` must be one of: {allowed}; got {tag!r} - at `{path}.{tag_field}`")
        elif len(members) == 1:
            _collect(value, members[0], path, errors)
    elif origin is list and isinstance(value, list):
        (item,) = get_args(inner)
        for index, element in enumerate(value):
            _collect(element, item, f"{path}[{index}]", errors)
    elif origin is dict and isinstance(value, dict):
        item = get_args(inner)[1]
        for key, element in value.items():
            _collect(element, item, f"{path}.{key}", errors)
    if len(errors) == before:
        _convert_at(value, kind, path, errors)
    return len(errors) == before


def _check_parts(raw: dict[str, Any], errors: list[str]) -> None:
    """Check each section, each provider and each model by itself, so that every error is reported."""
    sections = {
        "server": ServerConfig,
        "redis": RedisConfig,
        "jobs": JobsConfig,
        "auth": AuthConfig,
        "image_store": ImageStoreConfig,
        "webhooks": WebhooksConfig,
        "console": ConsoleConfig,
        "sustainability": SiteFactors,
    }
    for key, value in raw.items():
        if key in sections:
            _collect(value, sections[key], f"$.{key}", errors)
        elif key == "providers":
            _collect(value, dict[str, ProviderConfig], "$.providers", errors)
        elif key == "models":
            _collect(value, list[ModelConfig], "$.models", errors)
        else:
            errors.append(f"Object contains unknown field `{key}` - at `$`")


def _default_store_kind(raw: Any) -> Any:
    """An ``image_store`` without ``kind`` is the directory store."""
    store = raw.get("image_store") if isinstance(raw, dict) else None
    if isinstance(store, dict) and "kind" not in store:
        raw["image_store"] = {"kind": "directory", **store}
    return raw


def parse_config(text: str, source: str = "<string>", environ: dict[str, str] | None = None) -> GatewayConfig:
    """Parse and check YAML text; a ``ConfigError`` names ``source`` and every field at fault."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    errors: list[str] = []
    expanded = _default_store_kind(_expand(raw, "$", dict(os.environ) if environ is None else environ, errors))
    if not isinstance(expanded, dict):
        errors.append(f"Expected `object`, got `{type(expanded).__name__}` - at `$`")
    else:
        unset = [error.split("(needed at ", 1)[1][:-1] for error in errors]  # a value left empty: no second error
        checked: list[str] = []
        _check_parts(expanded, checked)
        errors += [error for error in checked if not any(error.endswith(f" - at {path}") for path in unset)]
        if errors:  # the cross-references are checked on the whole config below; with errors, on the YAML itself
            errors += raw_references(expanded)
    if not errors:
        try:
            return msgspec.convert(expanded, GatewayConfig)
        except msgspec.ValidationError as exc:
            errors += str(exc).removesuffix(" - at `$`").split("; ")
    lines = [f"{source}: {error}" for error in errors]
    raise ConfigError("\n".join(lines), lines)


def load_config(path: str | Path | None = None) -> GatewayConfig:
    """Load the file at ``path`` (the built-in default when None)."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    return parse_config(text, str(path))
