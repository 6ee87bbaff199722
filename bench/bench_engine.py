"""Engine benchmark for one NVIDIA GPU: parity with transformers, then decode tokens/s.

Prepared for the GPU machine (not run in CI). No weights are downloaded: it builds a
random ~1B-parameter Llama-shaped checkpoint (Llama-3.2-1B's shape) in the real HF format
unless --model points at a local checkpoint.

    python bench/bench_engine.py                       # ~1B Llama, bf16, batch 1 and 16
    python bench/bench_engine.py --model /path/to/ckpt --batch 1 8 32 --compile

It prints: fp32 parity of the tiny checkpoints on CUDA (max |logit diff|, greedy-64 match),
then per batch size the decode throughput (tokens/s over all sequences) and ms per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    """Wait for queued GPU work so timings are real."""
    if device == "cuda":
        torch.cuda.synchronize()


def make_1b_checkpoint(out: Path) -> Path:
    """A random checkpoint with Llama-3.2-1B's shape (1.24 B params, bf16 on disk)."""
    from safetensors.torch import save_file

    from deepserve.engine.model.args import ModelArgs
    from deepserve.engine.tiny import make_tiny_checkpoint, random_state_dict

    make_tiny_checkpoint(out, "llama")  # tokenizer and file layout
    config = json.loads((out / "config.json").read_text())
    config.update({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                   "rope_theta": 500000.0, "max_position_embeddings": 8192,
                   "tie_word_embeddings": True, "torch_dtype": "bfloat16",
                   "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192}})
    # a real 1B model has a 128k vocabulary; keep the tokenizer small but pay for the head
    config["vocab_size"] = 128256
    state = random_state_dict(ModelArgs.from_hf_config(config), seed=0)
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def parity_on_device(tmp: Path, device: str) -> None:
    """Tiny checkpoints: logits and greedy tokens vs transformers, both on ``device`` in fp32."""
    import transformers

    from deepserve.engine.checkpoint import load_transformer
    from deepserve.engine.tiny import TINY_ARCHITECTURES, make_tiny_checkpoint

    for arch in TINY_ARCHITECTURES:
        model_dir = make_tiny_checkpoint(tmp / arch, arch, seed=1)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        hf = hf.to(device).eval()  # type: ignore[call-arg,arg-type]
        ours = load_transformer(model_dir, device=device)
        ours.setup_caches(1, 128)
        ids = torch.arange(1, 30, device=device)[None]
        with torch.no_grad():
            gap = (hf(ids).logits - ours(ids, torch.arange(29, device=device)[None],
                                          torch.tensor([0], device=device))).abs().max().item()
            seq, ok = ids, True
            pos = ids.shape[1]
            ours_next = int(ours(ids, torch.arange(pos, device=device)[None],
                                 torch.tensor([0], device=device))[0, -1].argmax())
            for _ in range(64):
                ref_next = int(hf(seq).logits[0, -1].argmax())
                ok &= ref_next == ours_next
                seq = torch.cat([seq, torch.tensor([[ref_next]], device=device)], dim=1)
                ours_next = int(ours(seq[:, -1:], torch.tensor([[pos]], device=device),
                                     torch.tensor([0], device=device))[0, -1].argmax())
                pos += 1
        print(f"parity {arch:12s} max|dlogit| = {gap:.2e}  greedy-64 identical = {ok}")


def decode_throughput(model_dir: Path, batches: list[int], steps: int, compile_decode: bool,
                      device: str) -> None:
    """Decode tokens/s of the engine's batched decode step at each batch size."""
    from deepserve.engine.build import build_engine
    from deepserve.engine.options import EngineOptions
    from deepserve.engine.sampling import SamplingParams

    for batch in batches:
        engine = build_engine(EngineOptions(
            model_dir=str(model_dir), device=device, precision="bf16", max_batch_size=batch,
            max_input_tokens=128, max_new_tokens_limit=steps + 16, compile=compile_decode))
        params = SamplingParams(max_tokens=steps, ignore_eos=True)
        engine.generate(["warm up"] * batch, SamplingParams(max_tokens=16, ignore_eos=True))
        sync(device)
        start = time.perf_counter()
        results = engine.generate([f"Request {i}: the cache holds" for i in range(batch)], params)
        sync(device)
        elapsed = time.perf_counter() - start
        tokens = sum(r.generated_tokens for r in results)
        print(f"decode batch={batch:3d}  {tokens / elapsed:9.1f} tokens/s  "
              f"{1000 * elapsed / steps:7.2f} ms/step  ({tokens} tokens in {elapsed:.2f} s)")
        del engine
        if device == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    """Run parity then the throughput sweep; returns a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", type=Path, help="local HF checkpoint (default: random ~1B Llama)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu only to dry-run the script with a small --model")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --device cpu for a dry run)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_parity:
            parity_on_device(Path(tmp), args.device)
        model_dir = args.model or make_1b_checkpoint(Path(tmp) / "llama-1b")
        decode_throughput(model_dir, args.batch, args.steps, args.compile, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
