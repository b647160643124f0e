"""Training recipes shipped inside the package: ``--config coaug-cpu`` reads ``recipes/coaug-cpu.yaml``.

Each YAML file's header says what it trains, how long it takes and how to use the result.

>>> recipe_names()
['agent-cpu', 'agent-gpu', 'coaug-cpu', 'coaug-gpu', 'coaug-quickstart']
>>> find_config("coaug-cpu") == RECIPES_DIR / "coaug-cpu.yaml"
True
"""

from __future__ import annotations

from pathlib import Path

from searchrl.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent
_SUFFIXES = (".yaml", ".yml")


def recipe_names() -> list[str]:
    """Names of the packaged recipes (``coaug-cpu``, ``agent-cpu``, ...)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def find_config(config: str | Path) -> Path:
    """The YAML file ``--config`` names: an existing path as it is, else a packaged recipe's name.

    A recipe may be named with or without ``.yaml`` (``coaug-cpu``, ``coaug-cpu.yaml``). A path
    that is neither raises :class:`ConfigError` listing the recipes.
    """
    path = Path(config)
    if path.exists():
        return path
    stem = path.name[: -len(path.suffix)] if path.suffix in _SUFFIXES else path.name
    recipe = RECIPES_DIR / f"{stem}.yaml"
    if len(path.parts) == 1 and recipe.is_file():
        return recipe
    names = recipe_names()
    if recipe.is_file():  # e.g. the old location configs/coaug-cpu.yaml
        hint = f"recipes ship with the package: pass --config {stem}"
    else:
        hint = f"give a YAML file or a packaged recipe: {', '.join(names)}"
    raise ConfigError("config file not found", path=path, hint=hint)


__all__ = ["RECIPES_DIR", "find_config", "recipe_names"]
