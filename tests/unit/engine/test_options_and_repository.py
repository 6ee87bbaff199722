"""Engine options and the generated Triton model repository (torch-free modules)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepserve.engine.options import EngineOptions, EngineOptionsError, SparseAttentionOptions
from deepserve.engine.triton.protocol import INPUTS, OUTPUTS
from deepserve.engine.triton.repository import (
    read_options_from_config,
    render_model_repository,
    write_model_repository,
)

pytestmark = pytest.mark.unit


def test_options_round_trip_through_json() -> None:
    opts = EngineOptions(model_dir="/models/x", precision="bf16", tensor_parallel=4,
                         sparse_attention=SparseAttentionOptions(enabled=True, top_k=512),
                         usage_endpoint="http://op:8090/v1/usage/events")
    assert EngineOptions.from_json(opts.to_json()) == opts
    assert json.loads(opts.to_json())["sparse_attention"]["top_k"] == 512


@pytest.mark.parametrize(("changes", "field"), [
    ({"precision": "int3"}, "precision"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"tensor_parallel": 0}, "tensor_parallel"),
    ({"error_bound": 1.5}, "error_bound"),
    ({"kv_cache_tokens": 10}, "kv_cache_tokens"),
    ({"usage_endpoint": "ftp://x"}, "usage_endpoint"),
    ({"model_dir": ""}, "model_dir"),
])
def test_invalid_options_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(EngineOptionsError) as err:
        EngineOptions(**{"model_dir": "/m", **changes})  # type: ignore[arg-type]
    assert err.value.field == field and str(err.value).startswith(field)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(EngineOptionsError, match="max_batch"):
        EngineOptions.from_dict({"model_dir": "/m", "max_batch": 2})
    with pytest.raises(EngineOptionsError, match=r"sparse_attention\.topk"):
        EngineOptions.from_dict({"model_dir": "/m", "sparse_attention": {"topk": 2}})


def test_cache_slots_follow_kv_cache_tokens() -> None:
    opts = EngineOptions(model_dir="/m", max_batch_size=8, max_input_tokens=100,
                         max_new_tokens_limit=28, kv_cache_tokens=3 * 128)
    assert opts.cache_slots == 3
    assert EngineOptions(model_dir="/m", max_batch_size=8).cache_slots == 8


def _pbtxt_options(pbtxt: str) -> str:
    literal = re.search(r'string_value: "((?:[^"\\]|\\.)*)"', pbtxt)
    assert literal is not None
    return literal.group(1).encode().decode("unicode_escape")


def test_repository_is_decoupled_python_model_with_documented_io() -> None:
    opts = EngineOptions(model_dir='/models/with "quotes"', device="cpu")
    files = render_model_repository("tiny-llama", opts, version="3")
    assert set(files) == {"config.pbtxt", "3/model.py"}
    pbtxt = files["config.pbtxt"]
    assert 'backend: "python"' in pbtxt and "decoupled: true" in pbtxt and "KIND_CPU" in pbtxt
    for spec in (*INPUTS, *OUTPUTS):
        assert f'name: "{spec.name}"' in pbtxt
    assert EngineOptions.from_json(_pbtxt_options(pbtxt)) == opts
    assert "from deepserve.engine.triton.backend import TritonPythonModel" in files["3/model.py"]
    config = {"parameters": {"engine_options": {"string_value": opts.to_json()}}}
    assert read_options_from_config(config) == opts


def test_repository_refuses_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_name"):
        render_model_repository("bad name", EngineOptions(model_dir="/m"))
    with pytest.raises(ValueError, match="version"):
        render_model_repository("ok", EngineOptions(model_dir="/m"), version="v1")
    model_dir = write_model_repository(tmp_path, "ok", EngineOptions(model_dir="/m"))
    assert (model_dir / "config.pbtxt").is_file() and (model_dir / "1" / "model.py").is_file()


def test_options_and_repository_do_not_import_torch() -> None:
    code = ("import sys, deepserve.engine.options, deepserve.engine.triton.repository, "
            "deepserve.engine.triton.local; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
