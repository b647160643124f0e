"""Run configurations: pydantic models loaded from YAML, overridable with ``key=value`` pairs.

Config files are read as plain YAML only: no Python tags (``!!python/...``), and a key given
twice in one mapping is an error rather than the last value silently winning.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from searchrl.errors import ConfigError
from searchrl.recipes import find_config

C = TypeVar("C", bound=BaseModel)

_MERGE_TAG = "tag:yaml.org,2002:merge"
_UNKNOWN_TAG = re.compile(r"constructor for the tag '([^']*)'")


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML itself would keep the last value)."""


def _construct_mapping(loader: ConfigLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # `<<: *defaults` merges, and explicit keys may override it
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = first_line.get(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if earlier is not None:
            raise _DuplicateKeyError(
                None, None, f"duplicate key {key!r} (first given on line {earlier})", key_node.start_mark
            )
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=True)


ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    """Plain YAML (see :class:`ConfigLoader`); errors are ``yaml.YAMLError``."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(err: yaml.YAMLError) -> tuple[str, int | None]:
    """One line saying what is wrong, and the 1-based line it is on when known."""
    mark = getattr(err, "problem_mark", None)
    line = None if mark is None else mark.line + 1
    if isinstance(err, _DuplicateKeyError):
        return f"{err.problem}; give each key once", line
    problem = getattr(err, "problem", None)
    tag = _UNKNOWN_TAG.search(problem or "")
    if tag is not None:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (
            f"the YAML tag {name} is not allowed in a config file "
            "(configs hold plain strings, numbers, lists and mappings)",
            line,
        )
    if isinstance(err, yaml.MarkedYAMLError):
        text = "; ".join(part for part in (err.context, problem) if part)
        column = f", column {mark.column + 1}" if mark is not None else ""
        return f"not valid YAML: {' '.join(text.split())}{column}", line
    return f"not valid YAML: {' '.join(str(err).split())}", line


def read_yaml_file(path: Path) -> Any:
    """The YAML document in ``path``; every problem is one :class:`ConfigError` naming the file (and line)."""
    if not path.exists():
        raise ConfigError("config file not found", path=path)
    if path.is_dir():
        raise ConfigError("is a folder, not a config file", path=path, hint="pass a YAML file or a packaged recipe name, e.g. coaug-cpu")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror or err}", path=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"not UTF-8 text (byte {data[err.start:err.start + 1]!r}); is this a YAML file?", path=path, line=line
        ) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as err:
        message, line = _yaml_problem(err)
        raise ConfigError(message, path=path, line=line) from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["train.steps=20", "model=foo"]`` -> nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value", hint="e.g. --set train.steps=20")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: {_yaml_problem(err)[0]}", hint="quote the value") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def refuse_renamed_keys(raw: Any, renamed: Mapping[str, str]) -> None:
    """Raise ``ValueError`` naming the new key when ``raw`` (a config mapping) uses an old one.

    ``renamed`` maps dotted old keys to their new place (a whole section may be named too). Called
    from a model's ``mode="before"`` validator, so the error reaches users as a config problem.

    >>> refuse_renamed_keys({"optim": {"steps": 3}}, {"optim.steps": "grpo.steps"})
    Traceback (most recent call last):
    ...
    ValueError: optim.steps is now grpo.steps
    >>> refuse_renamed_keys({"grpo": {"steps": 3}}, {"optim.steps": "grpo.steps"})
    """
    if not isinstance(raw, Mapping):
        return
    for old, new in renamed.items():
        node: Any = raw
        for part in old.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            raise ValueError(f"{old} is now {new}")


def load_config(model: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Read ``path`` (a YAML file, or the name of a packaged recipe such as ``coaug-cpu``) into
    ``model``, apply ``key=value`` overrides, validate.

    Unknown keys are rejected, so a typo never silently falls back to a default.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = find_config(path)
        loaded = read_yaml_file(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("a config file must be a YAML mapping", path=path)
        raw = loaded
    raw = _merge(raw, parse_overrides(overrides))
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe_problem(model, e) for e in err.errors())
        raise ConfigError(f"invalid configuration: {problems}", path=path) from None


def _describe_problem(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "<root>"
    if error.get("type") != "extra_forbidden":
        return f"{where}: {error['msg']}"
    suggestions = suggest_keys(model, [str(p) for p in error["loc"]])
    hint = f"did you mean {' or '.join(suggestions)}?" if suggestions else "see the keys with --print-config"
    return f"{where}: unknown key ({hint})"


# --- the keys of a config: help for --set, suggestions for typos ---------------------------------


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``Section``, ``Section | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


@dataclass(frozen=True)
class ConfigKey:
    """One settable key of a config: ``--set key=value``."""

    key: str  # dotted, e.g. "grpo.steps"
    type: str
    default: Any
    help: str


def config_keys(model: type[BaseModel], prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of ``model`` (nested sections flattened to dotted keys), in declaration order,
    with its type, default and the field's description as help."""
    keys: list[ConfigKey] = []
    for name, info in model.model_fields.items():
        section = _section_model(info.annotation)
        if section is not None:
            keys += config_keys(section, f"{prefix}{name}.")
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, Path):
            default = str(default)
        help_text = info.description or ""
        keys.append(ConfigKey(f"{prefix}{name}", _type_name(info.annotation), "(required)" if info.is_required() else default, help_text))
    return keys


def _section_names(model: type[BaseModel], parents: list[str]) -> list[str] | None:
    """Field names of the section at ``parents`` (e.g. ``["grpo"]``), or None when it is not a model."""
    current: type[BaseModel] | None = model
    for name in parents:
        info = current.model_fields.get(name) if current is not None else None
        current = _section_model(info.annotation) if info is not None else None
        if current is None:
            return None
    return list(current.model_fields)


def suggest_keys(model: type[BaseModel], loc: list[str], limit: int = 3) -> list[str]:
    """Close matches for the unknown key at ``loc`` (``["grpo", "stpes"]`` -> ``["grpo.steps"]``)."""
    *parents, unknown = loc
    leaves = [k.key for k in config_keys(model)]
    sections = sorted({k.rsplit(".", 1)[0] for k in leaves if "." in k})
    suggestions: list[str] = []
    names = _section_names(model, parents) or []
    prefix = ".".join(parents) + "." if parents else ""
    suggestions += [prefix + n for n in difflib.get_close_matches(unknown, names, n=limit, cutoff=0.6)]
    # The right name in another section: `steps` -> `grpo.steps`.
    suggestions += [key for key in leaves + sections if key.rsplit(".", 1)[-1] == unknown]
    dotted = ".".join(loc)
    suggestions += difflib.get_close_matches(dotted, leaves + sections, n=limit, cutoff=0.75)
    return list(dict.fromkeys(s for s in suggestions if s != dotted))[:limit]


def format_config(config: BaseModel) -> str:
    """The resolved ``config`` as YAML, followed by every key with its type, default and help as
    YAML comments, so the whole text is still a config file ``--config`` can read."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip() + "\n"
    keys = config_keys(type(config))
    width = max(len(k.key) for k in keys)
    lines = ["", "# Keys (override any with --set KEY=VALUE; nested keys are dotted):"]
    for key in keys:
        default = json.dumps(key.default, default=str) if key.default != "(required)" else key.default
        detail = f"{key.type}, default {default}"
        lines.append(f"#   {key.key.ljust(width)}  {key.help + ' ' if key.help else ''}({detail})")
    return text + "\n".join(lines) + "\n"
