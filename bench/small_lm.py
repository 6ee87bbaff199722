"""A small byte-level Llama trained here on local text, for quality benchmarks.

The corpus is the Python standard library's top-level ``*.py`` sources on this machine,
sorted by name and concatenated (deterministic for a given Python build); the last 5%
is held out. Tokens are bytes (vocabulary 256). Training is bounded by wall time.
The trained weights are cached (keyed by shape, seed and training time) so the sparse
and precision benchmarks reuse them.
"""

from __future__ import annotations

import logging
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.transformer import Transformer

log = logging.getLogger("bench.small_lm")


def small_args(context: int = 512) -> ModelArgs:
    """Four layers, 128 wide, GQA 4 query / 2 KV heads of 32 dims, byte vocabulary."""
    return ModelArgs(architecture="llama", vocab_size=256, hidden_size=128, intermediate_size=384,
                     num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                     max_position_embeddings=max(2048, context), rms_norm_eps=1e-5)


def corpus_bytes(limit: int = 6_000_000) -> torch.Tensor:
    """Concatenated stdlib sources as a uint8 tensor (deterministic order)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    data = bytearray()
    for path in sorted(root.glob("*.py")):
        data += path.read_bytes()
        if len(data) >= limit:
            break
    return torch.frombuffer(data[:limit], dtype=torch.uint8).long()


def split(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) = first 95%, last 5%."""
    cut = int(len(data) * 0.95)
    return data[:cut], data[cut:]


def lm_loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``tokens`` [B, T] (fresh caches every call)."""
    bsz, seqlen = tokens.shape
    model.setup_caches(bsz, seqlen)
    positions = torch.arange(seqlen, device=tokens.device).expand(bsz, -1)
    logits = model(tokens, positions, torch.arange(bsz, device=tokens.device))
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def train_small_lm(device: str, seconds: float, context: int = 512, batch: int = 8,
                   seed: int = 0, cache_dir: Path | None = None) -> tuple[Transformer, dict[str, float]]:
    """Train (or load from ``cache_dir``) the small model; return it in eval mode and stats."""
    args = small_args(context)
    torch.manual_seed(seed)
    model = Transformer(args).to(device)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    key = f"small-lm-{context}-{batch}-{seed}-{int(seconds)}s-{device.split(':')[0]}.pt"
    path = cache_dir / key if cache_dir else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=device)
        model.load_state_dict(saved["state"])
        return model.eval(), saved["stats"]
    train, _ = split(corpus_bytes())
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    start, steps, loss = time.monotonic(), 0, torch.tensor(0.0)
    model.train()
    while time.monotonic() - start < seconds:
        frac = (time.monotonic() - start) / seconds
        for group in opt.param_groups:  # warm-up then linear decay
            group["lr"] = 3e-3 * min(1.0, steps / 30) * max(0.05, 1.0 - frac)
        offsets = torch.randint(0, len(train) - context - 1, (batch,), generator=gen)
        tokens = torch.stack([train[o:o + context] for o in offsets.tolist()]).to(device)
        loss = lm_loss(model, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps % 50 == 0:
            log.info("step %d loss %.3f", steps, float(loss.detach()))
    stats = {"steps": float(steps), "seconds": time.monotonic() - start,
             "tokens": float(steps * batch * context), "final_loss": float(loss.detach())}
    for p in model.parameters():
        p.requires_grad_(False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "stats": stats}, path)
    return model.eval(), stats


def held_out_batches(context: int, count: int, device: str) -> list[torch.Tensor]:
    """``count`` evenly spaced held-out windows of ``context`` bytes, each [1, context]."""
    _, held = split(corpus_bytes())
    stride = (len(held) - context) // count
    return [held[i * stride:i * stride + context][None].to(device) for i in range(count)]
