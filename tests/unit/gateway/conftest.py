"""Makes ``gateway_fakes`` importable by the gateway tests (tests run with importlib mode)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "gateway_fakes" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "gateway_fakes", Path(__file__).with_name("gateway_fakes.py")
    )
    assert _spec is not None and _spec.loader is not None
    sys.modules["gateway_fakes"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["gateway_fakes"])
