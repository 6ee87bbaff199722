"""LoRA adapters: many in one forward pass equal merged weights; base rows are untouched;
the resident pool loads on first use and evicts the least recently used (issue #19.5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.lora import (
    AdapterError,
    install_adapters,
    make_tiny_adapter,
    read_adapter,
    write_adapter,
)
from deepserve.engine.lora.adapters import merge_adapter
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.options import AdapterOptions, EngineOptions
from deepserve.engine.requests import GenerationChunk
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import InvalidRequestError, SamplingParams
from deepserve.engine.tiny import TINY_ARCHITECTURES

SEQ = 48


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_CACHE_DIR", str(tmp_path / "cache"))


def _options(base: Path, **extra: object) -> EngineOptions:
    adapters = (AdapterOptions("a", "builtin://tiny-lora-1"),
                AdapterOptions("b", "builtin://tiny-lora-2", rank=4))
    return EngineOptions(model_dir=str(base), adapters=adapters, **extra)  # type: ignore[arg-type]


def _model(path: Path, slots: int = 3) -> Transformer:
    model = load_transformer(path, device="cpu", dtype=torch.float32)
    model.fuse_projections()  # as the engine serves it: fused q/k/v and gate/up get one LoRA
    model.setup_caches(slots, SEQ)
    return model


def _logits(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Prefill a [B, T] batch into slots 0..B-1; logits [B, T, V]."""
    positions = torch.arange(tokens.shape[1])[None].expand(tokens.shape[0], -1)
    with torch.inference_mode():
        return model(tokens, positions, torch.arange(tokens.shape[0]), fresh=True)


@pytest.mark.parametrize("mode", ["segments", "gather"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_mixed_batch_equals_merged_weights(tiny_dirs: dict[str, Path], tmp_path: Path,
                                           arch: str, mode: str) -> None:
    base = tiny_dirs[arch]
    model = _model(base, slots=4)
    pool = install_adapters(model, _options(base), rows=4, static_shapes=mode == "gather")
    slot_a, slot_b = pool.acquire("a"), pool.acquire("b")
    assert slot_a and slot_b and slot_a != slot_b
    tokens = torch.randint(2, 400, (4, 12), generator=torch.Generator().manual_seed(3))
    pool.state.bind([slot_a, 0, slot_b, slot_a])  # two rows of a, one base, one b: one pass
    served = _logits(model, tokens)

    plain = _model(base, slots=4)
    base_logits = _logits(plain, tokens)
    if arch == "deepseek_v3":  # routed experts batch tokens across rows: rounding differs
        assert (served[1] - base_logits[1]).abs().max().item() < 1e-5
    else:
        assert torch.equal(served[1], base_logits[1]), "a base row must be bit-identical"
    for name, rows in (("a", (0, 3)), ("b", (2,))):
        spec = pool.adapters[name]
        weights = read_adapter(_adapter_dir(spec.source, base, spec.rank), name)
        merged = _model(merge_adapter(base, weights, tmp_path / f"merged-{name}"), slots=4)
        reference = _logits(merged, tokens)
        for row in rows:
            err = (served[row] - reference[row]).abs().max().item()
            assert err < 1e-4, f"{arch} {mode} adapter {name} row {row}: {err}"
            # the adapter matters: far from the base output
            assert (served[row] - base_logits[row]).abs().max().item() > 0.05


def _adapter_dir(source: str, base: Path, rank: int) -> str:
    from deepserve.engine.lora import resolve_adapter_dir

    return resolve_adapter_dir(source, base, rank)


def test_pool_loads_on_first_use_and_evicts_lru(tiny_dirs: dict[str, Path]) -> None:
    base = tiny_dirs["llama"]
    adapters = tuple(AdapterOptions(f"x{i}", f"builtin://tiny-lora-{i}") for i in range(3))
    options = EngineOptions(model_dir=str(base), adapters=adapters, max_resident_adapters=2)
    model = _model(base)
    pool = install_adapters(model, options, rows=3)
    assert pool.resident() == []
    s0 = pool.acquire("x0")
    s1 = pool.acquire("x1")
    assert pool.acquire("x2") is None, "both slots pinned: the request must wait"
    pool.release(s0)  # type: ignore[arg-type]
    s2 = pool.acquire("x2")
    assert s2 == s0 and pool.resident() == ["x1", "x2"]
    assert (pool.stats.loads, pool.stats.evictions) == (3, 1)
    pool.release(s1)  # type: ignore[arg-type]
    assert pool.acquire("x1") == s1 and pool.stats.hits == 1  # resident: no load
    # the evicted adapter's slot now holds x2 exactly: a row of it equals a fresh pool's
    tokens = torch.randint(2, 400, (1, 8), generator=torch.Generator().manual_seed(5))
    pool.state.bind([s2])  # type: ignore[list-item]
    reused = _logits(model, tokens)
    fresh_model = _model(base)
    fresh = install_adapters(fresh_model, options, rows=3)
    fresh.state.bind([fresh.acquire("x2")])  # type: ignore[list-item]
    assert torch.equal(reused, _logits(fresh_model, tokens))


def test_bad_adapters_are_refused_naming_them(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_dirs["llama"]
    big = make_tiny_adapter(tmp_path / "big", base, seed=1, rank=32)
    alien = write_adapter(tmp_path / "alien", {"model.layers.0.mlp.experts.0.up_proj": (
        torch.zeros(4, 64), torch.zeros(64, 4))}, rank=4, alpha=4)
    options = EngineOptions(model_dir=str(base), adapters=(
        AdapterOptions("big", str(big)), AdapterOptions("alien", str(alien)),
        AdapterOptions("ranked", "builtin://tiny-lora-3", rank=8),
        AdapterOptions("missing", str(tmp_path / "nothing"))))
    pool = install_adapters(_model(base), options, rows=3)
    with pytest.raises(AdapterError, match="'big': rank 32 exceeds max_adapter_rank 16"):
        pool.acquire("big")
    with pytest.raises(AdapterError, match=r"'alien': targets model\.layers\.0\.mlp\.experts\.0\.up_proj"):
        pool.acquire("alien")
    with pytest.raises(AdapterError, match="'missing'"):
        pool.acquire("missing")
    with pytest.raises(AdapterError, match="'nope': not one of"):
        pool.acquire("nope")
    assert pool.acquire("ranked") is not None  # built in at the configured rank
    assert pool.resident() == ["ranked"], "failed loads must not hold a slot"
    assert [pool.acquire(n) is not None for n in ("ranked", "ranked", "ranked")] == [True] * 3


def test_options_refuse_bad_adapter_lists(tmp_path: Path) -> None:
    from deepserve.engine.options import EngineOptionsError

    with pytest.raises(EngineOptionsError, match=r"adapters\.name: 'a' is listed twice"):
        EngineOptions(model_dir="m", adapters=(AdapterOptions("a", "x"), AdapterOptions("a", "y")))
    with pytest.raises(EngineOptionsError, match=r"adapters\.name: must match"):
        AdapterOptions("Bad Name", "x")
    with pytest.raises(EngineOptionsError, match=r"adapters\[a\].rank: 32 exceeds max_adapter_rank 16"):
        EngineOptions(model_dir="m", adapters=(AdapterOptions("a", "x", rank=32),))
    with pytest.raises(EngineOptionsError, match=r"adapters\.extra: unknown engine option"):
        EngineOptions.from_dict({"model_dir": "m", "adapters": [{"name": "a", "source": "x", "extra": 1}]})


def _run(engine: InferenceEngine, jobs: list[tuple[str, str | None]], max_tokens: int = 12
         ) -> list[GenerationChunk]:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    handles = [engine.submit(prompt, params, adapter=adapter) for prompt, adapter in jobs]
    engine.run_until_idle()
    return [h.drain()[-1] for h in handles]


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
def test_engine_serves_adapters_and_base_together_like_merged_checkpoints(
        tiny_dirs: dict[str, Path], tmp_path: Path, arch: str) -> None:
    """Greedy tokens of a continuous batch mixing two adapters and the base equal each
    merged checkpoint served alone; with one resident slot, the two adapters take turns."""
    base = tiny_dirs[arch]
    jobs = [("The cache", "a"), ("The cache", None), ("The cache", "b"), ("A story of", "a")]
    served = {}
    for resident in (2, 1):
        engine = build_engine(_options(base, device="cpu", max_batch_size=4, max_input_tokens=16,
                                       max_new_tokens_limit=16, max_resident_adapters=resident,
                                       precision="fp32"))
        served[resident] = _run(engine, jobs)
        stats = engine.feature_stats()["adapters"]
        assert isinstance(stats, dict)
        # two slots: a and b load once each; one slot: a, then b (a evicted), then a again
        assert (stats["loads"], stats["evictions"]) == ((2, 0) if resident == 2 else (3, 2))
    references: dict[str | None, InferenceEngine] = {None: build_engine(EngineOptions(
        model_dir=str(base), device="cpu", max_batch_size=1, max_input_tokens=16,
        max_new_tokens_limit=16, precision="fp32"))}
    for name, seed, rank in (("a", 1, 8), ("b", 2, 4)):
        weights = read_adapter(_adapter_dir(f"builtin://tiny-lora-{seed}", base, rank), name)
        references[name] = build_engine(EngineOptions(
            model_dir=str(merge_adapter(base, weights, tmp_path / name)), device="cpu",
            max_batch_size=1, max_input_tokens=16, max_new_tokens_limit=16, precision="fp32"))
    for (prompt, adapter), got, one_slot in zip(jobs, served[2], served[1], strict=True):
        want = _run(references[adapter], [(prompt, None)])[0]
        assert got.token_ids == want.token_ids == one_slot.token_ids, (prompt, adapter)
        assert got.adapter == adapter and got.finish_reason == "length"
    outputs = {adapter: tuple(got.token_ids or ()) for (p, adapter), got in zip(jobs, served[2], strict=True)
               if p == "The cache"}
    assert len(set(outputs.values())) == 3, "a, b and the base must answer differently"


def test_engine_refuses_unknown_adapters_and_fails_unloadable_ones(
        tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_dirs["llama"]
    options = EngineOptions(model_dir=str(base), device="cpu", max_batch_size=2, max_input_tokens=16,
                            max_new_tokens_limit=8, precision="fp32", adapters=(
                                AdapterOptions("a", "builtin://tiny-lora-1"),
                                AdapterOptions("gone", str(tmp_path / "gone"))))
    engine = build_engine(options)
    with pytest.raises(InvalidRequestError, match="adapter: unknown adapter zz; this model serves: a, gone"):
        engine.submit("x", SamplingParams(max_tokens=4), adapter="zz")
    broken, fine = _run(engine, [("The cache", "gone"), ("The cache", "a")], max_tokens=4)
    assert broken.finish_reason == "error" and "'gone'" in (broken.error or "")
    assert fine.finish_reason == "length" and fine.adapter == "a"
    plain = build_engine(options.replace(adapters=()))
    with pytest.raises(InvalidRequestError, match="this model serves none"):
        plain.submit("x", SamplingParams(max_tokens=4), adapter="a")
