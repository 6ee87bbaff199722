"""Adaptive precision scheduling (APS): per batch, the cheapest precision within the bound.

Calibration runs the model's own layers on sample prompts in every prepared precision
and measures, against the master precision, the relative logit error
``||z_p - z_master|| / ||z_master||`` and the forward time. It also records the
activation range the linear layers saw and an outlier signal of the embedded inputs
(``max|e| / rms(e)``), because quantisation error grows with the dynamic range a
per-token scale has to cover.

Per batch the scheduler measures the same outlier signal on the batch's embeddings
(cheap: one gather), predicts each precision's error as the calibrated error scaled by
the signal's ratio to calibration, drops precisions whose range cannot hold the
calibrated activations (fp16 above 65504), and picks the cheapest remaining one whose
predicted error is within ``error_bound`` (default 0.7%). Cheapest means the fastest
measured (a lower precision must beat the master one by 10%, so timing noise does not
flip choices), or given explicit costs the lowest cost. The master precision is always
allowed, so a choice always exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from deepserve.engine.precision.adaptive import AdaptivePrecisionHandle

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
MASTER_PREFERENCE = 0.9


@dataclass(frozen=True)
class PrecisionChoice:
    """What the scheduler chose for one batch and why."""

    precision: str
    predicted_error: float
    signal: float
    candidates: dict[str, float]  # precision -> predicted error of every allowed precision


@dataclass
class Calibration:
    """Per-precision measured relative logit error and seconds per forward, plus signals."""

    error: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    signal: float = 1.0
    max_abs_input: float = 0.0


Forward = Callable[[torch.Tensor], torch.Tensor]


def embedding_outlier_signal(embeddings: torch.Tensor) -> float:
    """``max|e| / rms(e)`` over a batch's embedded tokens [..., D] (>= 1)."""
    e = embeddings.detach().float()
    rms = e.pow(2).mean().sqrt().clamp_min(1e-12)
    return float(e.abs().max() / rms)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``||value - reference|| / ||reference||`` in float32."""
    ref = reference.float()
    return float((value.float() - ref).norm() / ref.norm().clamp_min(1e-12))


class PrecisionScheduler:
    """Chooses a compute precision per batch from measured error within ``error_bound``."""

    def __init__(self, handle: AdaptivePrecisionHandle, embed: Callable[[torch.Tensor], torch.Tensor],
                 error_bound: float = 0.007, costs: dict[str, float] | None = None) -> None:
        self.handle, self.embed, self.error_bound = handle, embed, error_bound
        self.costs = dict(costs) if costs else None
        self.calibration: Calibration | None = None
        self.served: dict[str, int] = {p: 0 for p in handle.precisions}

    def calibrate(self, forward: Forward, batches: Sequence[torch.Tensor],
                  margin: float = 1.25) -> Calibration:
        """Measure every precision on ``batches`` of token ids with ``forward(tokens) -> logits``.

        ``margin`` (>= 1) inflates measured errors to cover prompts unlike the samples.
        """
        cal = Calibration()
        state = self.handle.state
        references = []
        state.track_range = True
        with self.handle.use(state.master):
            for tokens in batches:
                references.append(forward(tokens).float())
        state.track_range = False
        cal.max_abs_input = state.max_abs_input
        cal.signal = max(embedding_outlier_signal(self.embed(t)) for t in batches)
        for precision in self.handle.precisions:
            errors, times = [], []
            with self.handle.use(precision):
                for tokens, ref in zip(batches, references, strict=True):
                    for _ in range(2):  # the faster of two runs: robust to a noisy machine
                        start = time.perf_counter()
                        logits = forward(tokens)
                        times.append(time.perf_counter() - start)
                    errors.append(relative_error(logits, ref))
            cal.seconds[precision] = min(times)
            cal.error[precision] = 0.0 if precision == state.master else max(errors) * margin
        self.calibration = cal
        log.info("precision calibration: %s", {p: (round(cal.error[p], 5), round(cal.seconds[p], 4))
                                              for p in cal.error})
        return cal

    def _cost(self, precision: str) -> float:
        if self.costs is not None:
            return self.costs.get(precision, float("inf"))
        assert self.calibration is not None
        seconds = self.calibration.seconds[precision]
        # a lower precision must be clearly faster (10%) to displace the master one
        return seconds * (MASTER_PREFERENCE if precision == self.handle.state.master else 1.0)

    def choose(self, tokens: torch.Tensor) -> PrecisionChoice:
        """The precision for a batch of token ids (any shape), from its outlier signal."""
        cal = self.calibration
        if cal is None:
            raise RuntimeError("calibrate() the scheduler before choose()")
        signal = embedding_outlier_signal(self.embed(tokens))
        ratio = max(1.0, signal / cal.signal)
        master = self.handle.state.master
        predicted: dict[str, float] = {}
        for precision in self.handle.precisions:
            if precision == "fp16" and cal.max_abs_input * ratio > FP16_MAX / 2:
                continue  # the range it would need is near fp16's limit
            predicted[precision] = cal.error[precision] * ratio
        allowed = [p for p, e in predicted.items() if e <= self.error_bound or p == master]
        best = min(allowed, key=lambda p: (self._cost(p), predicted[p]))
        return PrecisionChoice(best, predicted[best], signal, predicted)

    def record(self, precision: str, requests: int = 1) -> None:
        """Count ``requests`` served in ``precision`` (exposed by :meth:`stats`)."""
        self.served[precision] = self.served.get(precision, 0) + requests

    def stats(self) -> dict[str, object]:
        """Calibrated errors, per-precision timings and served counts."""
        cal = self.calibration or Calibration()
        return {"error_bound": self.error_bound, "calibrated_error": dict(cal.error),
                "seconds_per_forward": dict(cal.seconds), "served": dict(self.served)}
