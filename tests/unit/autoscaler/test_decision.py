"""The scale decision on simulated time: follows targets, does not flap, reacts to bursts."""

from __future__ import annotations

import itertools

import pytest

from deepserve.operator.autoscaler import (
    Observation,
    PolicyError,
    ScalerState,
    ScalingPolicy,
    decide,
)
from deepserve.operator.autoscaler.simulate import SimulatedModel, first_change

pytestmark = pytest.mark.unit


def policy(**kw: object) -> ScalingPolicy:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 20, "target": 4.0}
    base.update(kw)
    return ScalingPolicy(**base)  # type: ignore[arg-type]


def test_steps_up_and_down_with_the_target() -> None:
    sim = SimulatedModel(policy(), cold_start_s=5, start_replicas=1)
    sim.run(lambda t: 4.0, 90)
    assert sim.pods and len(sim.pods) == 1
    sim.run(lambda t: 22.0, 90)  # 22 in flight / 4 per replica -> 6 replicas
    assert len(sim.pods) == 6
    sim.run(lambda t: 7.0, 200)  # -> 2 replicas, after the scale-down delay
    assert len(sim.pods) == 2


def test_scale_down_waits_for_the_delay_and_is_rate_limited() -> None:
    sim = SimulatedModel(policy(scale_down_delay_s=60), cold_start_s=1, start_replicas=8)
    sim.run(lambda t: 32.0, 70)
    assert len(sim.pods) == 8
    rows = sim.run(lambda t: 4.0, 200)
    counts = [r.replicas for r in rows]
    first_drop = next(i for i, c in enumerate(counts) if c < 8)
    assert first_drop >= 55  # stable window and the 60 s delay hold the count
    assert min(counts[first_drop], 8) >= 4  # never more than a halving in one step
    assert counts[-1] == 1


def test_no_flapping_under_noise() -> None:
    # 10 in flight +-30 % on 4 per replica: 3 replicas, never bouncing.
    sim = SimulatedModel(policy(), cold_start_s=5, start_replicas=3, noise=0.3, seed=11)
    rows = sim.run(lambda t: 10.0, 600)
    changes = sum(1 for a, b in itertools.pairwise(rows) if a.replicas != b.replicas)
    assert changes == 0, [r.replicas for r in rows if r.replicas != 3][:10]
    assert rows[-1].replicas == 3


def test_burst_reacts_within_five_simulated_seconds() -> None:
    sim = SimulatedModel(policy(), cold_start_s=10, start_replicas=1)
    sim.run(lambda t: 3.0, 120)
    step_at = sim.now
    rows = sim.run(lambda t: 30.0, 20)
    latency = first_change(rows, step_at, 1)
    assert latency is not None and latency <= 5.0
    assert max(r.replicas for r in rows) in (7, 8)  # 30 / 4 within tolerance: no runaway while pods start


def test_moderate_step_scales_up_before_the_stable_window() -> None:
    sim = SimulatedModel(policy(), cold_start_s=5, start_replicas=2)
    sim.run(lambda t: 7.0, 120)
    step_at = sim.now
    rows = sim.run(lambda t: 11.0, 30)  # 1.4x: below panic, above tolerance
    latency = first_change(rows, step_at, 2)
    assert latency is not None and latency <= 5.0
    assert rows[-1].replicas == 3


def test_scale_to_zero_after_idle_and_back_on_held_request() -> None:
    p = policy(min_replicas=0, scale_to_zero=True, idle_seconds=120)
    sim = SimulatedModel(p, cold_start_s=5, start_replicas=1)
    sim.run(lambda t: 2.0, 30)
    rows = sim.run(lambda t: 0.0, 200)
    zero_at = next(r.t for r in rows if r.replicas == 0)
    assert 119 <= zero_at - 30 <= 125
    rows = sim.run(lambda t: 1.0, 20)  # first request arrives: the activator holds it
    assert rows[0].decision.mode == "activate" and rows[0].replicas == 1
    assert rows[-1].ready == 1


def test_missing_metrics_are_not_idle() -> None:
    p = policy(min_replicas=0, scale_to_zero=True, idle_seconds=60)
    st = ScalerState()
    for t in range(0, 300, 5):  # two pods exist, none Ready, no samples at all; but requests finish
        d = decide(p, st, Observation(float(t), 2, 0, None, requests=1.0))
        assert d.replicas == 2, d


def test_non_ready_pods_do_not_wedge_the_scaler() -> None:
    # two of three pods never become Ready: they are not capacity, and do not block scaling
    sim = SimulatedModel(policy(), cold_start_s=5, start_replicas=3, never_ready=2)
    sim.run(lambda t: 12.0, 120)
    assert (len(sim.pods), sim.trace[-1].ready) == (3, 1)
    sim.run(lambda t: 20.0, 60)  # 5 wanted: two more are added although two are stuck
    assert (len(sim.pods), sim.trace[-1].ready) == (5, 3)
    sim.run(lambda t: 2.0, 300)  # scale-down still happens (and removes the stuck pods first)
    assert (len(sim.pods), sim.trace[-1].ready) == (1, 1)


def test_only_stuck_replicas_and_held_requests_add_one_more() -> None:
    p = policy(min_replicas=0, scale_to_zero=True, stuck_after_s=60)
    sim = SimulatedModel(p, cold_start_s=5, start_replicas=1, never_ready=1)
    rows = sim.run(lambda t: 1.0, 90)
    assert rows[0].replicas == 1 and max(r.replicas for r in rows) == 2  # one more, not a runaway
    grew = next(r.t for r in rows if r.replicas == 2)
    assert 59 <= grew <= 61
    assert rows[-1].ready == 1 and all(r.decision.mode != "idle" for r in rows)


def test_manual_external_value_is_kept_by_the_simulation_and_bounds_hold() -> None:
    p = policy(max_replicas=4)
    st = ScalerState()
    d = decide(p, st, Observation(0.0, 1, 1, 100.0))
    d = decide(p, st, Observation(1.0, 1, 1, 100.0))
    assert d.replicas == 4 and d.mode in ("panic", "burst")


def test_fixed_range_has_nothing_to_decide() -> None:
    d = decide(policy(min_replicas=3, max_replicas=3), ScalerState(), Observation(0.0, 3, 3, 50.0))
    assert d.replicas == 3 and d.mode == "fixed"


def test_floor_without_scale_to_zero() -> None:
    d = decide(policy(min_replicas=2), ScalerState(), Observation(0.0, 0, 0, None))
    assert d.replicas == 2


@pytest.mark.parametrize(("field", "value"), [("target", 0), ("max_replicas", 0), ("panic_window_s", 90),
                                              ("metric", "gpu")])
def test_invalid_policy_names_the_field(field: str, value: object) -> None:
    with pytest.raises(PolicyError, match=field):
        policy(**{field: value})
