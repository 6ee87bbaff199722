"""The layering contracts cover the whole operator (a new package cannot slip past them)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


def test_only_the_kube_seam_imports_kubernetes_and_the_contract_lists_every_other_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c.get("forbidden_modules") == ["kubernetes"])
    operator = ROOT / "deepserve" / "operator"
    modules = {f"deepserve.operator.{p.stem}" for p in operator.iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert set(contract["source_modules"]) == modules - {"deepserve.operator.kube"}
    assert "ignore_imports" not in contract  # no exceptions: every other module goes through kube.py
