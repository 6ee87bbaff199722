"""The operator's side of the autoscaler: when a model's replica count is worth deciding.

A kopf daemon per InferenceModel (see :mod:`deepserve.operator.controller.handlers`)
registers one :class:`ModelScaling` with the operator's :class:`AutoscalerRounds`, which
calls :meth:`ModelScaling.step` every ``tick_s`` with the model's latest snapshot. Models with a fixed replica count (``minReplicas ==
maxReplicas``, no scale to zero) cost no API calls beyond an occasional HPA list: the
autoscaler runs for them only when an HPA targets them, to report the external owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.autoscaler import io
from deepserve.operator.autoscaler.decision import PolicyError
from deepserve.operator.autoscaler.loop import AutoscalerOptions, ModelAutoscaler, TickResult
from deepserve.operator.autoscaler.ownership import hpa_targeting
from deepserve.operator.autoscaler.policy import policy_from_spec
from deepserve.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)


def scaling_enabled(spec: Mapping[str, Any]) -> bool:
    """Whether ``spec.scaling`` leaves anything to decide (a replica range or scale to zero).

    False for a spec that does not validate (the reconcile reports that).
    """
    try:
        view = InferenceModelSpec.from_dict(dict(spec))
        return policy_from_spec(view.scaling, view.placement.concurrency).enabled
    except (SpecError, PolicyError, ValueError):
        return False


class ModelScaling:
    """One model's autoscaler as the operator runs it; not thread-safe (one daemon per model)."""

    def __init__(self, kube: Kube, namespace: str, name: str, options: AutoscalerOptions,
                 pools: Callable[[], list[Any]] | None = None, clock: Callable[[], float] = time.monotonic,
                 ranked: Callable[[InferenceModelSpec, list[Any]], list[Any]] | None = None,
                 held: Callable[[str, str], int] | None = None) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.options = options
        self._pools = pools
        self._ranked = ranked
        self._held = held
        self._clock = clock
        self.scaler: ModelAutoscaler | None = None  # built when the model needs one, dropped when not
        self._hpa: tuple[float, bool] = (-1e18, False)

    def _hpa_applies(self) -> bool:
        now = self._clock()
        if now - self._hpa[0] >= self.options.hpa_every_s:
            self._hpa = (now, hpa_targeting(io.list_hpas(self.kube, self.namespace), self.name) is not None)
        return self._hpa[1]

    def step(self, model: Mapping[str, Any]) -> TickResult | None:
        """One tick for ``model`` (a snapshot with spec and status); None when skipped or gone.

        Raises KubeError when the API server fails (the caller logs and retries next tick).
        """
        if scaling_enabled(model.get("spec") or {}) or self._hpa_applies():
            if self.scaler is None:
                self.scaler = ModelAutoscaler(self.kube, self.namespace, self.name, self.options,
                                              pools=self._pools, clock=self._clock, ranked=self._ranked,
                                              held=self._held)
            return self.scaler.tick()
        self.scaler = None  # fresh windows and status cache if scaling is enabled again
        if (model.get("status") or {}).get("scaling"):
            io.patch_scaling_status(self.kube, self.namespace, self.name, None)  # the field's one writer
            log.info("%s/%s: fixed replica count; status.scaling cleared", self.namespace, self.name)
        return None


class AutoscalerRounds:
    """Every model's autoscaler ticks in one loop: a round every ``tick_s``, a few models at a time.

    A kopf daemon per model only registers its :class:`ModelScaling` here while it runs (kopf
    stops daemons when the operator exits or a peer takes over, so a standby replica scales
    nothing). Ticking inside each daemon instead cost memory per model: at 300 models the
    daemons took 11 MiB (bench_operator.py with and without ``--autoscale-tick 0``).
    A model's steps never overlap: a round waits for all of its steps.
    """

    def __init__(self, tick_s: float, model: Callable[[tuple[str, str]], Mapping[str, Any] | None],
                 concurrency: int = 6) -> None:
        self.tick_s = tick_s
        self._model = model  # the latest snapshot of a model, None once it is gone
        self._scalings: dict[tuple[str, str], ModelScaling] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None

    def add(self, key: tuple[str, str], scaling: ModelScaling) -> None:
        """Tick ``scaling`` from the next round on (starts the loop if it is not running)."""
        self._scalings[key] = scaling
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="deepserve autoscaler rounds")

    def remove(self, key: tuple[str, str], scaling: ModelScaling) -> None:
        """Stop ticking ``scaling`` (a newer registration of the same model stays)."""
        if self._scalings.get(key) is scaling:
            del self._scalings[key]

    async def _step(self, key: tuple[str, str], scaling: ModelScaling) -> None:
        async with self._limit:
            model = self._model(key)
            if model is None or self._scalings.get(key) is not scaling:
                return
            try:
                await asyncio.to_thread(scaling.step, model)
            except KubeError as e:
                log.warning("%s/%s: autoscaler tick failed: %s", *key, e)
            except Exception:  # one bad tick must not end scaling for good
                log.exception("%s/%s: autoscaler tick failed", *key)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._scalings:
            started = loop.time()
            await asyncio.gather(*(self._step(k, s) for k, s in list(self._scalings.items())))
            await asyncio.sleep(max(0.0, self.tick_s - (loop.time() - started)))
