"""Model sources resolve to real checkpoints, or fail with a message naming the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.engine.sources import ModelSourceError, resolve_model_dir

pytestmark = pytest.mark.unit


def test_builtin_source_creates_a_deterministic_checkpoint_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_CACHE_DIR", str(tmp_path))
    first = Path(resolve_model_dir("builtin://tiny-llama"))
    assert (first / "config.json").exists() and (first / "tokenizer.json").exists()
    assert list(first.glob("*.safetensors"))
    stamp = (first / "config.json").stat().st_mtime_ns
    assert Path(resolve_model_dir("builtin://tiny-llama")) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_builtin_model_serves_through_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepserve.engine.build import build_engine
    from deepserve.engine.options import EngineOptions
    from deepserve.engine.sampling import SamplingParams

    monkeypatch.setenv("DEEPSERVE_CACHE_DIR", str(tmp_path))
    engine = build_engine(EngineOptions(model_dir="builtin://tiny-qwen2", device="cpu", precision="fp32"))
    out = engine.generate(["The cache"], SamplingParams(max_tokens=4, ignore_eos=True))
    assert out[-1].generated_tokens == 4


@pytest.mark.parametrize(("source", "words"), [
    ("builtin://tiny-gpt9", "unknown built-in model"),
    ("s3://bucket", "s3://<bucket>/<prefix>"),
    ("hf://org", "hf://<org>/<name>"),
    ("/definitely/not/here", "not a directory"),
])
def test_bad_sources_are_refused_clearly(source: str, words: str) -> None:
    with pytest.raises(ModelSourceError, match=words) as e:
        resolve_model_dir(source)
    assert source in str(e.value)
