"""Bucketed decode (issue #19.2): padded steps equal unpadded ones; the engine keeps
running sequences in the lowest slots and decodes only up to the highest of them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.checkpoint import load_transformer
from deepserve.engine.decode_graphs import BucketedDecoder, bucket_for, decode_buckets
from deepserve.engine.generate import decode_step, prefill
from deepserve.engine.options import EngineOptions
from deepserve.engine.sampling import SamplingParams

pytestmark = pytest.mark.unit


def test_buckets_cover_every_batch_size_with_few_shapes() -> None:
    assert decode_buckets(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert decode_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    assert decode_buckets(3) == (1, 2, 3)
    for n in range(1, 101):
        assert n <= bucket_for(n, decode_buckets(100)) <= max(8, 2 * n)
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(101, decode_buckets(100))
    with pytest.raises(ValueError, match="slots"):
        decode_buckets(0)


def test_padded_step_equals_the_unpadded_step_and_leaves_live_rows_alone(
        tiny_model_dirs: dict[str, Path]) -> None:
    model = load_transformer(tiny_model_dirs["llama"], "cpu", torch.float32)
    model.setup_caches(8, 64)
    gen = torch.Generator().manual_seed(5)
    lengths = [7, 12, 3, 9, 5]  # bucket 8: three padding rows
    with torch.no_grad():
        for slot, n in enumerate(lengths):
            prefill(model, torch.randint(0, model.args.vocab_size, (n,), generator=gen), slot)
    twin = copy.deepcopy(model)
    tokens = torch.randint(0, model.args.vocab_size, (5,), generator=gen)
    positions = torch.tensor(lengths)
    decoder = BucketedDecoder(model, 8)
    with torch.no_grad():
        for _ in range(3):  # three steps, the cache growing each time
            got = decoder(tokens, positions)
            want = decode_step(twin, tokens, positions)  # exactly five rows, no padding
            assert got.shape == want.shape == (5, model.args.vocab_size)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            tokens, positions = got.argmax(-1), positions + 1
    assert decoder.steps_per_bucket == {8: 3}
    for attn, ref in zip((layer.self_attn for layer in model.model.layers),
                         (layer.self_attn for layer in twin.model.layers), strict=True):
        for slot, n in enumerate(lengths):  # every live row the same in both caches
            torch.testing.assert_close(attn.cache.k_cache[slot, :, : n + 3],
                                       ref.cache.k_cache[slot, :, : n + 3])


def test_engine_decodes_up_to_the_highest_running_slot_and_reuses_low_slots(
        tiny_model_dirs: dict[str, Path]) -> None:
    engine = build_engine(EngineOptions(model_dir=str(tiny_model_dirs["llama"]), device="cpu",
                                        max_batch_size=8, max_input_tokens=32,
                                        max_new_tokens_limit=16, precision="fp32"))
    assert engine.decoder.buckets == (1, 2, 4, 8)
    assert engine.warm_up() >= 0 and engine.decoder.steps_per_bucket == {}
    short, long = SamplingParams(max_tokens=2, ignore_eos=True), SamplingParams(max_tokens=6, ignore_eos=True)
    alone = engine.generate(["a garden by the river"], long)[0].token_ids
    assert engine.decoder.steps_per_bucket == {1: 5}  # one sequence: batch 1, not 8
    handles = [engine.submit(p, short if i < 2 else long) for i, p in
               enumerate(["the cat", "a dog", "a garden by the river"])]
    engine.run_until_idle()  # slots 0, 1 finish early; slot 2 keeps decoding at bucket 4
    assert [h.final.token_ids for h in handles][2] == alone  # type: ignore[union-attr]
    assert engine.decoder.steps_per_bucket[4] == 5
    first, _, _ = (engine.submit(p, long) for p in ["the cat", "a dog", "a bird"])
    engine.step()  # slots 0, 1, 2
    first.cancel()
    engine.step()  # slot 0 freed
    late = engine.submit("a fish", long)
    engine.step()
    assert engine._running[0].request_id == late.request_id  # the lowest free slot again
    engine.run_until_idle()
    assert sorted(engine._free) == list(range(8))
