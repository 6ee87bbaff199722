"""The operator's side of the autoscaler: when a model's replica count is worth deciding.

A kopf daemon per InferenceModel (see :mod:`deepserve.operator.controller.handlers`) keeps
one :class:`ModelScaling` and calls :meth:`ModelScaling.step` every ``tick_s`` with the
model's latest snapshot. Models with a fixed replica count (``minReplicas ==
maxReplicas``, no scale to zero) cost no API calls beyond an occasional HPA list: the
autoscaler runs for them only when an HPA targets them, to report the external owner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.views import InferenceModelSpec
from deepserve.operator.autoscaler import io
from deepserve.operator.autoscaler.decision import PolicyError
from deepserve.operator.autoscaler.loop import AutoscalerOptions, ModelAutoscaler, TickResult
from deepserve.operator.autoscaler.ownership import hpa_targeting
from deepserve.operator.autoscaler.policy import policy_from_spec
from deepserve.operator.kube import Kube

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
            self.kube.patch_status(API_VERSION, "InferenceModel", self.name, self.namespace, {"scaling": None})
            log.info("%s/%s: fixed replica count; status.scaling cleared", self.namespace, self.name)
        return None
