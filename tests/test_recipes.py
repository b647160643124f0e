"""Training recipes ship inside the package and load by name: ``--config coaug-cpu``."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from searchrl.cli import main
from searchrl.config import load_config
from searchrl.errors import ConfigError
from searchrl.recipes import RECIPES_DIR, find_config, recipe_names

REPO = Path(__file__).resolve().parents[1]


def _config_class(kind: str):
    """The trainer's config class (``coaug`` or ``agent``), wherever the trainer module keeps it."""
    name = {"coaug": "CoAugConfig", "agent": "AgentTrainConfig"}[kind]
    for module in (f"searchrl.{kind}.config", f"searchrl.{kind}.train"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise AssertionError(f"no {name} found")


def test_every_recipe_loads_and_validates_by_name():
    assert recipe_names() == ["agent-cpu", "agent-gpu", "coaug-cpu", "coaug-gpu", "coaug-quickstart"]
    for name in recipe_names():
        config_class = _config_class(name.split("-")[0])
        config = load_config(config_class, name)
        assert isinstance(config, config_class)
        assert load_config(config_class, f"{name}.yaml") == config  # the file name works too
    coaug = load_config(_config_class("coaug"), "coaug-cpu", ["output_dir=runs/elsewhere"])
    assert str(coaug.output_dir) == "runs/elsewhere"  # overrides apply on top of a recipe


def test_an_existing_file_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("coaug-cpu").write_text("model: mine\n")
    assert find_config("coaug-cpu") == Path("coaug-cpu")
    own = tmp_path / "sub" / "agent.yaml"
    own.parent.mkdir()
    own.write_text("seed: 7\n")
    assert load_config(_config_class("agent"), own).seed == 7
    assert find_config("agent-cpu") == RECIPES_DIR / "agent-cpu.yaml"


def test_an_unknown_config_names_the_recipes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config file not found") as err:
        find_config("coaug-cpx")
    assert "coaug-cpu" in (err.value.hint or "") and "agent-gpu" in (err.value.hint or "")
    with pytest.raises(ConfigError) as err:
        find_config("configs/coaug-cpu.yaml")  # where the recipes lived before they shipped in the package
    assert err.value.hint == "recipes ship with the package: pass --config coaug-cpu"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "agent", "--config", "agent-cpx"])
    assert exit_.value.code == 2 and "agent-cpu" in capsys.readouterr().err


def test_the_wheel_carries_the_recipes_and_py_typed():
    """pyproject's package data names every recipe file and the ``py.typed`` marker, inside the package."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["searchrl"]
    package = REPO / "src" / "searchrl"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    assert package / "py.typed" in shipped
    assert {path.resolve() for path in shipped if path.suffix == ".yaml"} == set(RECIPES_DIR.glob("*.yaml"))
