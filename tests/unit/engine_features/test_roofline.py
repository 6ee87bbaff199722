"""The honest decode roofline (bench/roofline.py): data-sheet peak, embedding rows read."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("roofline", ROOT / "bench" / "roofline.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["roofline"] = mod
    spec.loader.exec_module(mod)
    return mod


rl = _load()
SHAPE = rl.Shape(vocab=1000, dim=64, layers=2, kv_heads=2, head_dim=16)


def test_step_reads_embedding_rows_not_table() -> None:
    weights = SHAPE.embedding_bytes + 10_000
    # 3 rows of the table, the other weights, 3 sequences x 5 tokens of KV
    want = 10_000 + 3 * 64 * 2 + 3 * 5 * (2 * 2 * 2 * 16 * 2)
    assert rl.decode_step_bytes(SHAPE, weights, batch=3, ctx=5) == want


def test_roofline_uses_datasheet_peak() -> None:
    weights = SHAPE.embedding_bytes + 10_000
    step = rl.decode_step_bytes(SHAPE, weights, batch=2, ctx=8)
    assert rl.roofline_tokens_per_s(SHAPE, weights, 2, 8) == pytest.approx(2 * 4.8e12 / step)


@pytest.mark.parametrize("batch,ctx,weights", [(0, 5, 10**9), (1, -1, 10**9), (1, 5, 10)])
def test_bad_input_is_refused(batch: int, ctx: int, weights: int) -> None:
    with pytest.raises(ValueError, match="batch="):
        rl.decode_step_bytes(SHAPE, weights, batch=batch, ctx=ctx)


def test_h200_figure_is_lower_than_the_copy_bandwidth_figure() -> None:
    result = json.loads((ROOT / "docs/results/h200-decode-compiled.json").read_text())
    row = next(r for r in rl.rederive(result, rl.LLAMA_31_8B, 512)
               if r["batch"] == 1 and r["mode"] == "compiled")
    # issue 19: the old denominators inflated the batch-1 figure by about 1.2x
    assert row["old_fraction"] / row["fraction_of_peak_roofline"] == pytest.approx(1.2, abs=0.02)
    assert row["fraction_of_peak_roofline"] < 0.8
