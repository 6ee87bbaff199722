"""``deepserve engine make-tiny`` and ``generate`` (in-process) through the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deepserve.operator.cli import main

pytestmark = pytest.mark.unit


def test_make_tiny_then_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny-qwen"
    assert main(["engine", "make-tiny", "--arch", "qwen2", "--out", str(out), "--seed", "4"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    first = (out / "model.safetensors").read_bytes()
    assert main(["engine", "make-tiny", "--arch", "qwen2", "--out", str(out), "--seed", "4"]) == 0
    assert (out / "model.safetensors").read_bytes() == first  # deterministic
    capsys.readouterr()
    assert main(["engine", "generate", "--model", str(out), "--prompt", "The cache",
                 "--max-tokens", "5"]) == 0
    assert re.search(r"\[(stop|length); \d+ prompt tokens, [1-5] generated\]", capsys.readouterr().out)
    assert main(["engine", "generate", "--model", str(out), "--prompt", "",
                 "--max-tokens", "5"]) == 2
