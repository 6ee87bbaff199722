"""#17.1: the planner's memory model is what the engine really allocates, and the engine is
handed the precision the planner chose.

The engine is built for real on CPU (tiny checkpoints, every precision policy); its
allocation is the sum of unique parameter/buffer storages plus adaptive-precision weight
copies and the rotary tables. The planner sizes the same model from the same config.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.contract import POLICIES, builtin_config, master_precision
from deepserve.engine.contract.config import ModelArgs
from deepserve.engine.contract.memory import rope_table_bytes
from deepserve.engine.options import EngineOptions
from deepserve.engine.tiny import TINY_ARCHITECTURES, make_tiny_checkpoint
from deepserve.operator.controller.planning import model_shape
from deepserve.operator.placement.estimate import kv_cache_bytes_per_gpu, weight_bytes_per_gpu
from deepserve.operator.placement.shape import ModelShape

pytestmark = pytest.mark.unit
SLOTS, MAX_INPUT, MAX_NEW = 4, 192, 64


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    return {arch: make_tiny_checkpoint(root / arch, arch, seed=0) for arch in TINY_ARCHITECTURES}


def _allocated_bytes(engine: Any) -> tuple[int, int]:
    """(bytes of unique parameter/buffer storages + weight copies + rotary tables, parameters)."""
    model = engine.model
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in [*model.parameters(), *model.buffers()]}
    params = sum({t.untyped_storage().data_ptr(): t.numel() for t in model.parameters()}.values())
    params += sum(b.numel() for name, b in model.named_buffers() if name.endswith("e_score_correction_bias"))
    handle = engine.features.precision_handle
    copies = handle.extra_bytes if handle is not None else 0
    rope = sum(t.numel() * t.element_size() for t in (model.rope_cos, model.rope_sin))
    return sum(seen.values()) + copies + rope, params


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_planner_counts_the_parameters_the_engine_builds(tiny_models: dict[str, Path], arch: str) -> None:
    engine = build_engine(EngineOptions(model_dir=str(tiny_models[arch]), precision="fp32",
                                        device="cpu", max_batch_size=SLOTS))
    _, params = _allocated_bytes(engine)
    shape = ModelShape.from_hf_config(json.loads((tiny_models[arch] / "config.json").read_text()))
    assert shape.total_params == params


@pytest.mark.parametrize("precision", POLICIES)
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_planner_memory_matches_engine_allocation_within_10_percent(
        tiny_models: dict[str, Path], arch: str, precision: str) -> None:
    engine = build_engine(EngineOptions(
        model_dir=str(tiny_models[arch]), precision=precision, device="cpu", max_batch_size=SLOTS,
        max_input_tokens=MAX_INPUT, max_new_tokens_limit=MAX_NEW))
    measured, _ = _allocated_bytes(engine)
    config = json.loads((tiny_models[arch] / "config.json").read_text())
    shape = ModelShape.from_hf_config(config)
    tokens = SLOTS * (MAX_INPUT + MAX_NEW)
    planned = (weight_bytes_per_gpu(shape, precision, 1, fp8_native=False, device_type="cpu")
               + kv_cache_bytes_per_gpu(shape, precision, 1, tokens, device_type="cpu")
               + rope_table_bytes(ModelArgs.for_planning(config), master_precision(precision, "cpu"),
                                  MAX_INPUT + MAX_NEW))
    print(f"{arch} {precision}: planned {planned:.0f} B, measured {measured:.0f} B, "
          f"ratio {planned / measured:.3f}")
    assert planned == pytest.approx(measured, rel=0.10), (arch, precision, planned, measured)
    assert engine.model.lm_head.weight.dtype == getattr(torch, {
        "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32"))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", POLICIES)
def test_planner_memory_matches_engine_allocation_on_a_gpu(
        tiny_models: dict[str, Path], precision: str) -> None:
    """On a GPU the master is bf16 and ``auto`` adds fp8 copies where fp8 runs natively."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from deepserve.engine.precision import fp8_hardware_support

    native, _ = fp8_hardware_support("cuda")
    for arch in TINY_ARCHITECTURES:
        before = torch.cuda.memory_allocated()
        engine = build_engine(EngineOptions(
            model_dir=str(tiny_models[arch]), precision=precision, device="cuda",
            max_batch_size=SLOTS, max_input_tokens=MAX_INPUT, max_new_tokens_limit=MAX_NEW))
        measured, _ = _allocated_bytes(engine)
        allocated = torch.cuda.memory_allocated() - before
        config = json.loads((tiny_models[arch] / "config.json").read_text())
        shape = ModelShape.from_hf_config(config)
        master = master_precision(precision, "cuda")
        planned = (weight_bytes_per_gpu(shape, precision, 1, native, device_type="cuda")
                   + kv_cache_bytes_per_gpu(shape, precision, 1, SLOTS * (MAX_INPUT + MAX_NEW))
                   + rope_table_bytes(ModelArgs.for_planning(config), master, MAX_INPUT + MAX_NEW))
        print(f"cuda {arch} {precision} (fp8 native {native}): planned {planned:.0f} B, tensors "
              f"{measured:.0f} B (ratio {planned / measured:.3f}), torch.cuda.memory_allocated "
              f"+{allocated} B")
        assert planned == pytest.approx(measured, rel=0.10), (arch, precision, planned, measured)
        del engine
        torch.cuda.empty_cache()


def _load_model_cases() -> Any:
    name = "model_cases"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "operator" / "model_cases.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-deepseek-v3"])
def test_builtin_shapes_come_from_the_configs_the_engine_builds(
        tiny_models: dict[str, Path], name: str) -> None:
    from deepserve.operator.api.views import InferenceModelSpec

    spec = InferenceModelSpec.from_dict(_load_model_cases().make_model().source(f"builtin://{name}").obj()["spec"])
    planned = model_shape(spec)
    arch = {"tiny-llama": "llama", "tiny-qwen2": "qwen2", "tiny-deepseek-v3": "deepseek_v3"}[name]
    built = json.loads((tiny_models[arch] / "config.json").read_text())
    assert built == builtin_config(name)
    assert planned == ModelShape.from_hf_config(built, name=name)


def test_the_engine_is_handed_the_planners_precision_and_tp() -> None:
    from deepserve.operator.api.views import InferenceModelSpec
    from deepserve.operator.builders import BuildContext, ChosenPlacement, ModelRef, Settings
    from deepserve.operator.builders.repository import engine_options

    cases = _load_model_cases()
    raw = cases.make_model().obj()["spec"]  # precision auto
    raw["versions"] = [{"name": "main", "weight": 90},
                       {"name": "canary", "weight": 10, "precision": "fp32"}]
    view = InferenceModelSpec.from_dict(cases.make_model().obj()["spec"] | raw)
    chosen = ChosenPlacement("t4", "nvidia-tesla-t4", 2, 2, "fp16")  # auto -> fp16 on a T4
    ctx = BuildContext(ModelRef("m", "ns", "uid"), view, chosen, Settings(), {"main": 1, "canary": 1})
    main, canary = (engine_options(ctx, v) for v in view.versions)
    assert (main.precision, main.tensor_parallel) == ("fp16", 2)
    assert (canary.precision, canary.tensor_parallel) == ("fp32", 2)  # a version's own choice stays
