"""``builtin://tiny-chat``: a tiny Llama trained here, in seconds, to answer in readable text.

The demo's model must answer with words, not the noise of random weights. This trains the
engine's own :class:`Transformer` (the shape in
:data:`deepserve.engine.contract.builtin.TINY_CHAT_SHAPE`, the tiny tokenizer's 512-token
vocabulary) on chat turns made from the shipped corpus (``tiny_corpus.txt``): the user
gives the opening words of a sentence, the assistant answers with the whole sentence.
Training is a fixed number of steps from a fixed seed on one thread, so the same code
writes the same weights; the checkpoint is the real Hugging Face layout with a chat
template in ``tokenizer_config.json``. :mod:`deepserve.engine.sources` creates it once and
caches it like the other built-in models.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from deepserve.engine.contract.builtin import TINY_CHAT_SHAPE
from deepserve.engine.model.args import ModelArgs
from deepserve.engine.model.transformer import Transformer
from deepserve.engine.tiny import EOS, corpus_text, make_tiny_checkpoint, train_tokenizer

log = logging.getLogger(__name__)

#: Jinja chat template (the Hugging Face convention): "role: content" lines, then the cue.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
STEPS, BATCH, LR = 220, 16, 5e-3
#: ``builtin://tiny-chat-draft``: a one-layer model trained the same way, the draft for
#: speculative decoding of tiny-chat (same tokenizer; about a third of its compute per token)
DRAFT_SHAPE: dict[str, Any] = {**TINY_CHAT_SHAPE, "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 1, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "head_dim": 16}
OPENING_WORDS = 4


def conversations() -> list[tuple[str, str]]:
    """(user, assistant) turns: a sentence's opening words, then the whole sentence."""
    text = " ".join(corpus_text().split())
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) > OPENING_WORDS]
    return [(" ".join(s.split()[:OPENING_WORDS]), s) for s in sentences]


def render_prompt(user: str) -> str:
    """What :data:`CHAT_TEMPLATE` renders for one user turn with the generation cue."""
    return f"user: {user}\nassistant:"


def _batch_source() -> torch.Tensor:
    tok = train_tokenizer()
    eos = tok.token_to_id(EOS)
    examples = [[*tok.encode(render_prompt(u) + " " + a).ids, eos] for u, a in conversations()]
    width = max(map(len, examples))
    pad = torch.full((len(examples), width), -100, dtype=torch.long)  # -100: no loss there
    for i, ids in enumerate(examples):
        pad[i, :len(ids)] = torch.tensor(ids)
    return pad


def train_weights(args: ModelArgs, steps: int = STEPS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Train ``args``' model on :func:`conversations`; returns its state dict (deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums, the same weights, every run
    try:
        torch.manual_seed(seed)
        model = Transformer(args)
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
        pad = _batch_source()
        rows_n, width = pad.shape
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.95))
        model.train()
        for step in range(steps):
            for group in opt.param_groups:  # warm-up, then linear decay
                group["lr"] = LR * min(1.0, (step + 1) / 15) * max(0.05, 1 - step / steps)
            rows = pad[torch.randint(0, rows_n, (BATCH,), generator=gen)]
            model.setup_caches(BATCH, width)
            logits = model(rows.clamp(min=0), torch.arange(width).expand(BATCH, -1), torch.arange(BATCH))
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), rows[:, 1:].flatten(),
                                   ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                log.info("tiny-chat step %d loss %.3f", step, float(loss.detach()))
        return {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def make_tiny_chat_checkpoint(out_dir: str | Path, steps: int = STEPS, seed: int = 0,
                              shape: dict[str, Any] | None = None) -> Path:
    """Write the trained tiny-chat checkpoint (HF layout, chat template) to ``out_dir``
    (``shape``: another model size, e.g. :data:`DRAFT_SHAPE`)."""
    out = make_tiny_checkpoint(out_dir, "llama", seed=seed, config_overrides=shape or TINY_CHAT_SHAPE)
    args = ModelArgs.from_hf_config(json.loads((out / "config.json").read_text()))
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    trained = train_weights(args, steps, seed)
    missing = names - set(trained)
    if missing:
        raise RuntimeError(f"trained model lacks checkpoint tensors: {sorted(missing)[:4]}")
    save_file({k: trained[k] for k in sorted(names)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return out
