"""Speculative decoding (issue #19.7): greedy output identical to plain decoding, and
rejection sampling that keeps the target's distribution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepserve.engine.build import build_engine
from deepserve.engine.options import EngineOptions, EngineOptionsError
from deepserve.engine.runtime import InferenceEngine
from deepserve.engine.sampling import SamplingParams
from deepserve.engine.speculative import accept_greedy, accept_sampled
from deepserve.engine.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.unit

PROMPTS = ["a cat", "the dog ran", "one two three four", "the quick brown fox jumps over",
           "birds sing in the tall green trees", "x", "numbers such as one two three",
           "the small cat sleeps on the warm mat", "river bank", "all day long the sun",
           "hello there", "what is the time"]


@pytest.fixture(scope="module")
def drafts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A different random llama (low acceptance) of the target's vocabulary, and a
    1-layer one (another shape)."""
    root = tmp_path_factory.mktemp("drafts")
    return {"other": make_tiny_checkpoint(root / "other", "llama", seed=11),
            "small": make_tiny_checkpoint(root / "small", "llama", seed=5, config_overrides={
                "num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64})}


def _engine(path: Path, **kw: object) -> InferenceEngine:
    opts: dict[str, object] = {"max_batch_size": 4, **kw}
    return build_engine(EngineOptions(model_dir=str(path), device="cpu", max_input_tokens=40,
                                      max_new_tokens_limit=24, precision="fp32",
                                      **opts))  # type: ignore[arg-type]


def _run(engine: InferenceEngine, params: list[SamplingParams]) -> list[tuple[str, list[int], str]]:
    handles = [engine.submit(p, sp) for p, sp in zip(PROMPTS, params, strict=True)]
    engine.run_until_idle()
    out = []
    for h in handles:
        chunks = h.drain()
        final = chunks[-1]
        assert final.finished and final.finish_reason in ("stop", "length"), final
        out.append(("".join(c.text for c in chunks), list(final.token_ids or []), final.finish_reason or ""))
    return out


def _greedy_params(engine: InferenceEngine) -> list[SamplingParams]:
    """max_tokens edges (1, 2, k, k+1, the context's end) and stop strings from plain output."""
    plain = engine.generate(PROMPTS[:4], SamplingParams(max_tokens=12, ignore_eos=True))
    stops = [r.text[3:6] for r in plain if len(r.text) > 6]  # strings that do occur mid-way
    sizes = [1, 2, 3, 4, 5, 6, 7, 11, 24, 24, 13, 9]
    params = []
    for i, size in enumerate(sizes):
        stop = (stops[i % len(stops)],) if i % 3 == 0 and stops else ()
        params.append(SamplingParams(max_tokens=size, stop=stop, ignore_eos=i % 2 == 0))
    return params


@pytest.mark.parametrize("draft", ["target", "other", "small"])
@pytest.mark.parametrize("options", [{}, {"prefix_cache_mib": 4}, {"prefill_chunk_tokens": 5}],
                         ids=["plain", "prefix-cache", "chunked-prefill"])
def test_greedy_speculative_output_is_identical_to_plain_decoding(
        tiny_model_dirs: dict[str, Path], drafts: dict[str, Path], draft: str,
        options: dict[str, object]) -> None:
    target = tiny_model_dirs["llama"]
    plain = _engine(target, **options)
    params = _greedy_params(plain)
    want = _run(plain, params)
    draft_dir = target if draft == "target" else drafts[draft]
    for k in (1, 3):
        spec = _engine(target, speculative_model=str(draft_dir), speculative_tokens=k, **options)
        assert _run(spec, params) == want, (draft, k)
        stats = spec.speculative.stats  # type: ignore[union-attr]
        assert stats.proposed > 0
        if draft == "target":  # the model agrees with itself: every guess is kept
            assert stats.accepted == stats.proposed
    assert any(r[2] == "stop" for r in want) and any(len(r[1]) == 1 for r in want)


def test_sampled_speculative_requests_are_seeded_and_complete(
        tiny_model_dirs: dict[str, Path], drafts: dict[str, Path]) -> None:
    target = tiny_model_dirs["llama"]
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_k=40, seed=i, ignore_eos=True)
              for i in range(len(PROMPTS))]
    runs = [_run(_engine(target, speculative_model=str(drafts["other"]), speculative_tokens=3), params)
            for _ in range(2)]
    assert runs[0] == runs[1] and all(len(r[1]) == 10 for r in runs[0])


def test_rejection_sampling_keeps_the_target_distribution() -> None:
    """Two speculated positions over a 5-token vocabulary: the emitted (first, second)
    pairs follow p(first) p(second | first) whatever the draft q proposes."""
    gen = torch.Generator().manual_seed(0)
    vocab, n = 5, 40_000
    p1 = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q1 = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])  # a bad draft: most mass where p has little
    p2 = torch.softmax(torch.randn(vocab, vocab, generator=gen), dim=-1)  # p(second | first)
    q2 = torch.softmax(torch.randn(vocab, vocab, generator=gen), dim=-1)
    p3 = torch.full((vocab,), 1 / vocab)
    counts = torch.zeros(vocab, vocab)
    for _ in range(n):
        d1 = int(torch.multinomial(q1, 1, generator=gen))
        d2 = int(torch.multinomial(q2[d1], 1, generator=gen))
        out = accept_sampled(torch.stack([p1, p2[d1], p3]), torch.stack([q1, q2[d1]]), [d1, d2], gen)
        if len(out) == 1:  # first rejected: the second comes from the target, as plain decoding would
            out.append(int(torch.multinomial(p2[out[0]], 1, generator=gen)))
        counts[out[0], out[1]] += 1
    expected = (p1[:, None] * p2) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0, chi2  # 24 degrees of freedom: p < 0.002 for a correct sampler
    naive = (q1[:, None] * q2) * n  # the draft's own distribution is far from it
    assert float(((naive - expected) ** 2 / expected).sum()) > 1000


def test_greedy_acceptance_keeps_matching_guesses_and_adds_the_target_token() -> None:
    logits = torch.zeros(4, 6)
    logits[0, 2] = logits[1, 5] = logits[2, 1] = logits[3, 0] = 1.0  # argmax 2, 5, 1, 0
    assert accept_greedy(logits, [2, 5, 1]) == [2, 5, 1, 0]  # all kept + bonus
    assert accept_greedy(logits, [2, 4, 1]) == [2, 5]  # the second guess differs
    assert accept_greedy(logits, [3, 5, 1]) == [2]


def test_invalid_speculative_options_are_refused(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    for bad in ({"kv_page_tokens": 16}, {"compile": True}, {"tensor_parallel": 2},
                {"sparse_attention": {"enabled": True}}):
        with pytest.raises(EngineOptionsError, match="speculative_model"):
            EngineOptions.from_dict({"model_dir": "m", "speculative_model": "d", **bad})
    for tokens in (0, 17):
        with pytest.raises(EngineOptionsError, match="speculative_tokens"):
            EngineOptions(model_dir="m", speculative_model="d", speculative_tokens=tokens)
    other_vocab = make_tiny_checkpoint(tmp_path / "v", "llama", config_overrides={"vocab_size": 600})
    with pytest.raises(ValueError, match="vocabulary"):
        _engine(tiny_model_dirs["llama"], speculative_model=str(other_vocab))


def test_grammar_constrained_rows_decode_as_without_a_draft(
        tiny_model_dirs: dict[str, Path], drafts: dict[str, Path]) -> None:
    """A response_format row takes only the masked first distribution; free rows beside it
    keep speculating. Both equal plain decoding."""
    from deepserve.engine.structured.spec import ResponseFormat

    target = tiny_model_dirs["llama"]
    constrained = SamplingParams(max_tokens=12, response_format=ResponseFormat("regex", regex="[a-z ]{1,40}"))
    free = SamplingParams(max_tokens=12, ignore_eos=True)
    params = [constrained if i % 2 else free for i in range(len(PROMPTS))]
    want = _run(_engine(target), params)
    assert _run(_engine(target, speculative_model=str(drafts["other"]), speculative_tokens=3), params) == want
    assert all(set(text) <= set("abcdefghijklmnopqrstuvwxyz ") for text, _, _ in want[1::2])
