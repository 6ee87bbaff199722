"""``deepserve plan``: the table and exit codes people script against."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from placement_configs import LLAMA3_8B, LLAMA3_70B

from deepserve.operator.commands import plan as plan_cmd

pytestmark = pytest.mark.unit

POOLS = Path(__file__).resolve().parents[3] / "examples" / "pools.yaml"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    plan_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_plan_model_prints_ranked_table_for_hf_config(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "llama-70b" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(LLAMA3_70B))
    assert run(["plan", "model", "--hf-config", str(cfg), "--pools-file", str(POOLS)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model llama-70b: 70.6B params")
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["#", "pool", "accelerator", "tp"]
    assert lines[2].split()[0] == "1" and int(lines[2].split()[3]) >= 2
    assert "needs" in out and lines[-1].startswith("Chose pool")


def test_plan_model_json_and_no_fit_exit_code(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LLAMA3_8B))
    code = run(["plan", "model", "--hf-config", str(cfg), "--pools-file", str(POOLS),
                "--precision", "fp8", "--json", "--allowed-pools", "a100-sxm"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["chosen"] is None
    assert doc["reason"].startswith("PrecisionUnsupported")


def test_plan_model_json_lists_status_dicts(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LLAMA3_8B))
    assert run(["plan", "model", "--hf-config", str(cfg), "--pools-file", str(POOLS),
                "--json", "--max-tp", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["chosen"]["acceleratorId"] and doc["chosen"]["tensorParallel"] >= 1
    assert doc["chosen"]["nodeSelector"] and doc["chosen"]["costPerMillionTokens"] > 0
    assert any(c.get("rejected", "").startswith("TensorParallelLimit") for c in doc["ranked"])


def test_unreadable_pools_source_is_an_error_not_a_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  - {name: x}\n")
    assert run(["plan", "pools", "--pools-file", str(bad)]) == 2
    assert "acceleratorId" in capsys.readouterr().err


def test_plan_model_from_shape_flags(capsys) -> None:
    code = run(["plan", "model", "--params", "3e9", "--layers", "28", "--hidden", "3072",
                "--heads", "24", "--kv-heads", "8", "--pools-file", str(POOLS),
                "--precision", "fp8", "--allowed-pools", "l4"])
    assert code == 0 and "Chose pool l4" in capsys.readouterr().out
    # 8B under fp8 holds the bf16 master and the fp8 copy: 3 bytes a weight, not 1
    code = run(["plan", "model", "--params", "8e9", "--layers", "32", "--hidden", "4096",
                "--heads", "32", "--kv-heads", "8", "--pools-file", str(POOLS),
                "--precision", "fp8", "--allowed-pools", "l4"])
    assert code == 1 and "NoPoolFits" in capsys.readouterr().out


def test_plan_hardware_resolves_a_label(capsys) -> None:
    assert run(["plan", "hardware", "--label", "nvidia.com/gpu.product=NVIDIA-L4"]) == 0
    assert "nvidia-l4 " in capsys.readouterr().out
