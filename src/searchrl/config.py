"""Run configurations: pydantic models loaded from YAML, overridable with ``key=value`` pairs.

Config files are read as plain YAML only: no Python tags (``!!python/...``), and a key given
twice in one mapping is an error rather than the last value silently winning.
"""

from __future__ import annotations

import re
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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}", path=path) from None


def dump_config(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
