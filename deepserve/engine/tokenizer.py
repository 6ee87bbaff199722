"""Text <-> tokens for a checkpoint directory, with streaming-safe detokenization."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from deepserve.engine.checkpoint import CheckpointError


class TextTokenizer:
    """The checkpoint's ``tokenizer.json`` plus its end-of-sequence ids."""

    def __init__(self, tokenizer: Tokenizer, eos_ids: tuple[int, ...]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)

    @classmethod
    def from_dir(cls, model_dir: str | Path, config_eos: tuple[int, ...] = ()) -> TextTokenizer:
        """Load ``tokenizer.json``; eos ids come from generation_config.json or ``config_eos``."""
        root = Path(model_dir)
        path = root / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception subclass
            raise CheckpointError(f"{path}: cannot load tokenizer: {exc}") from exc
        eos: set[int] = set(config_eos)
        gen_cfg = root / "generation_config.json"
        if gen_cfg.is_file():
            value = json.loads(gen_cfg.read_text(encoding="utf-8")).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [] if value is None else [value])
        return cls(tokenizer, tuple(sorted(int(e) for e in eos)))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` including the special tokens the tokenizer adds (BOS)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


class StreamDecoder:
    """Turns generated ids into text pieces, holding back incomplete characters and any
    tail that could still become a stop string, so streamed text never has to be retracted.
    """

    def __init__(self, tokenizer: TextTokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # all text decoded so far (before stop truncation)
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode_new(self) -> str:
        prefix = self.tokenizer.decode(self.ids[self._prefix_offset:self._read_offset])
        full = self.tokenizer.decode(self.ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to emit (may be empty).

        After a stop string appears, :attr:`stopped` is True and the text before it is
        the last piece.
        """
        self.ids.append(token_id)
        self.text += self._decode_new()
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.emitted - len(stop)))
            if at != -1:
                self.text, self.stopped = self.text[:at], True
        if self.stopped:
            return self.flush()
        safe = len(self.text) - self._held_back()
        piece = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted += len(piece)
        return piece

    def _held_back(self) -> int:
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        """Return all text not yet emitted (at the end of generation).

        Bytes of an incomplete character decode as U+FFFD here, as a full decode would.
        """
        if not self.stopped and self._read_offset < len(self.ids):
            prefix = self.tokenizer.decode(self.ids[self._prefix_offset:self._read_offset])
            full = self.tokenizer.decode(self.ids[self._prefix_offset:])
            self.text += full[len(prefix):]
            self._prefix_offset = self._read_offset = len(self.ids)
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece
