"""Batch-1 decode latency through a real Triton server vs the same engine in-process.

Both sides load the same random checkpoint (Llama-3.2-1B shape, bf16) with the same
EngineOptions. The output-head rows of special tokens and of ids past the tokenizer's
vocabulary are zeroed: greedy decoding then never stops early and every token is text, so
each token streams as its own chunk. In-process: ``InferenceEngine.submit`` and iterate the streamed chunks.
Served: ``tritonserver`` from the nvidia-pytriton wheel (or ``DEEPSERVE_TRITON_HOME``) runs
the Python backend model the operator deploys, and a gRPC streaming client (one response per
token) sends the same request. Reported per request: time to first token, time per output
token after the first, and the whole request; overhead = served / in-process - 1.

    python bench/bench_triton_overhead.py --compile        # GPU machine
    python bench/bench_triton_overhead.py --device cpu --tiny --tokens 16   # smoke test
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "Measure the serving overhead of one token at a time, " * 4


def make_checkpoint(out: Path, tiny: bool) -> Path:
    """The benchmark checkpoint; special and out-of-vocabulary logits pinned at zero, which
    random logits almost always exceed, so they are never the greedy choice."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    from deepserve.engine.tiny import make_tiny_checkpoint

    if tiny:
        make_tiny_checkpoint(out, "llama", seed=1)
    else:
        from bench_engine import make_1b_checkpoint
        make_1b_checkpoint(out)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    special = list(tokenizer.get_added_tokens_decoder())  # ids of <|bos|>, <|eos|>, <|pad|>
    state = load_file(str(out / "model.safetensors"))
    head = "lm_head.weight" if "lm_head.weight" in state else "model.embed_tokens.weight"
    state[head][tokenizer.get_vocab_size():] = 0
    for token in special:
        state[head][int(token)] = 0
    save_file(state, str(out / "model.safetensors"))
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def in_process(options: Any, tokens: int, repeats: int) -> dict[str, float]:
    from deepserve.engine.build import build_engine
    from deepserve.engine.sampling import SamplingParams

    engine = build_engine(options)
    engine.start()
    rows = []
    try:
        for i in range(repeats + 2):  # two warm-up requests (compile, caches)
            params = SamplingParams(max_tokens=tokens)
            t0 = time.perf_counter()
            handle = engine.submit(PROMPT, params)
            stamps, generated = [], 0
            for chunk in handle:
                stamps.append(time.perf_counter())
                generated = chunk.generated_tokens
            if i >= 2:
                rows.append(request_row(t0, stamps, generated))
    finally:
        engine.stop()
    del engine
    return summarize(rows)


def request_row(t0: float, stamps: list[float], generated: int) -> dict[str, float]:
    """TTFT, per-token time after the first, whole request (ms) and the token count."""
    if generated < 2 or len(stamps) < 2:
        raise RuntimeError(f"only {generated} token(s) / {len(stamps)} chunk(s) came back")
    first, last = stamps[0], stamps[-1]
    return {"ttft_ms": (first - t0) * 1e3,
            "tpot_ms": (last - first) * 1e3 / max(1, generated - 1),
            "total_ms": (last - t0) * 1e3, "tokens": float(generated)}


def served(options: Any, tokens: int, repeats: int, work: Path) -> dict[str, float]:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from deepserve.engine.triton.local import LocalTriton
    from deepserve.engine.triton.repository import write_model_repository

    write_model_repository(work / "repo", "bench", options)
    rows = []
    with LocalTriton(work / "repo", log_path=work / "tritonserver.log") as server:
        server.wait_ready(timeout=900)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            for i in range(repeats + 2):
                text = grpcclient.InferInput("text_input", [1], "BYTES")
                text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
                limit = grpcclient.InferInput("max_tokens", [1], "INT32")
                limit.set_data_from_numpy(np.array([tokens], dtype=np.int32))
                t0 = time.perf_counter()
                client.async_stream_infer("bench", [text, limit], enable_empty_final_response=True)
                stamps, generated = [], 0
                while True:
                    result, error = results.get(timeout=600)
                    if error is not None:
                        raise RuntimeError(f"Triton answered with an error: {error}")
                    now = time.perf_counter()
                    count = result.as_numpy("generated_tokens")
                    if count is not None:
                        stamps.append(now)
                        generated = int(count[0])
                    final = result.get_response().parameters.get("triton_final_response")
                    if final is not None and final.bool_param:
                        break
                if i >= 2:
                    rows.append(request_row(t0, stamps, generated))
        finally:
            client.stop_stream()
            client.close()
    return summarize(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoint (smoke test)")
    ap.add_argument("--compile", action="store_true", help="EngineOptions.compile (CUDA graphs)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    from deepserve.engine.options import EngineOptions

    res: dict[str, Any] = {"torch": torch.__version__, "device": a.device, "argv": sys.argv[1:]}
    if a.device == "cuda":
        res["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        work = Path(tmp)
        ckpt = make_checkpoint(work / "ckpt", a.tiny)
        options = EngineOptions(model_dir=str(ckpt), device=a.device, compile=a.compile,
                                precision="bf16" if a.device == "cuda" else "fp32",
                                max_batch_size=1, max_input_tokens=512,
                                max_new_tokens_limit=a.tokens)
        res["in_process"] = local = in_process(options, a.tokens, a.repeats)
        if a.device == "cuda":
            torch.cuda.empty_cache()
        try:
            res["served"] = remote = served(options, a.tokens, a.repeats, work)
        except Exception:
            log = work / "tritonserver.log"
            if log.exists():
                print(log.read_text()[-4000:], file=sys.stderr)
            raise
    res["overhead"] = {k: remote[k] / local[k] - 1 for k in ("ttft_ms", "tpot_ms", "total_ms")}
    print(f"{'':>12} {'TTFT ms':>9} {'TPOT ms':>9} {'request ms':>11} {'tokens':>7}")
    for name, row in (("in-process", local), ("Triton gRPC", remote)):
        print(f"{name:>12} {row['ttft_ms']:9.2f} {row['tpot_ms']:9.3f} {row['total_ms']:11.1f} "
              f"{row['tokens']:7.0f}")
    o = res["overhead"]
    print(f"{'overhead':>12} {100 * o['ttft_ms']:8.1f}% {100 * o['tpot_ms']:8.1f}% "
          f"{100 * o['total_ms']:10.1f}%")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
