"""The docstring examples in src/searchrl are part of the test suite."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_suite_collects_the_packages_docstring_examples():
    """``python3 -m pytest`` runs every ``>>>`` example under src/searchrl (after the tests)."""
    options = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    assert options["testpaths"] == ["tests", "src/searchrl"]
