"""Version choice (weights, session stickiness, pin) and replica choice (load, prefix affinity)."""

from __future__ import annotations

from collections import Counter

import pytest

from deepserve.operator.gateway.prefix import BLOCK_BYTES, PrefixIndex, block_hashes
from deepserve.operator.gateway.routing import ModelRoute, Router, VersionTarget

pytestmark = pytest.mark.unit

CANARY = ModelRoute(
    "team",
    "chat",
    aliases=("chat",),
    versions=(
        VersionTarget("stable", 90, ("http://s1", "http://s2")),
        VersionTarget("canary", 10, ("http://c1",)),
        VersionTarget("shadow", 0, ("http://x1",)),
    ),
)


def test_weights_split_traffic_and_zero_weight_gets_none() -> None:
    router = Router([CANARY], seed=5)
    seen = Counter(router.choose_version(CANARY) for _ in range(5000))
    assert 0.08 <= seen["canary"] / 5000 <= 0.12 and seen["shadow"] == 0, seen


def test_a_session_sticks_to_one_version_and_sessions_spread_by_weight() -> None:
    router = Router([CANARY], seed=5)
    for s in range(50):
        first = router.choose_version(CANARY, session=f"user-{s}")
        assert all(router.choose_version(CANARY, session=f"user-{s}") == first for _ in range(20))
    spread = Counter(router.choose_version(CANARY, session=f"user-{s}") for s in range(4000))
    assert 0.08 <= spread["canary"] / 4000 <= 0.12, spread
    # another gateway process (another seed) puts the same session on the same version
    other = Router([CANARY], seed=99)
    assert all(
        other.choose_version(CANARY, session=f"u{s}") == router.choose_version(CANARY, session=f"u{s}")
        for s in range(200)
    )


def test_pin_overrides_weights_even_at_zero_and_unknown_pin_is_none() -> None:
    router = Router([CANARY])
    assert router.choose_version(CANARY, pinned="shadow", session="s") == "shadow"
    assert router.choose_version(CANARY, pinned="nope") is None
    assert router.lookup("chat") is CANARY and router.lookup("team/chat") is CANARY


def test_least_outstanding_replica_is_picked() -> None:
    router = Router([CANARY], seed=1)
    state = router.state(CANARY, "stable")
    assert state is not None
    router.started(state, "http://s1", [])
    assert all(router.pick(state, []) == "http://s2" for _ in range(10))
    router.started(state, "http://s2", [])
    router.started(state, "http://s2", [])
    router.finished(state, "http://s1")
    assert router.pick(state, []) == "http://s1"
    picks = Counter()
    for _ in range(200):  # equal load: ties spread at random, not all on the first
        router.finished(state, "http://s2")
        router.finished(state, "http://s2")
        picks[router.pick(state, [])] += 1
    assert min(picks.values()) > 50


def test_prefix_affinity_wins_until_the_load_penalty_outweighs_it() -> None:
    router = Router([CANARY], seed=1, load_penalty=8.0)
    state = router.state(CANARY, "stable")
    assert state is not None
    system = "You are a careful assistant. " * 40  # ~1.1 KiB shared prefix: 18 blocks
    first = block_hashes(system + "question one")
    router.started(state, "http://s2", first)
    router.finished(state, "http://s2")
    again = block_hashes(system + "question two, a different one")
    assert all(router.pick(state, again) == "http://s2" for _ in range(20))
    assert router.prefix.matches(again, ["http://s1", "http://s2"]) == {
        "http://s1": 0,
        "http://s2": len(system.encode()) // BLOCK_BYTES,
    }
    router.started(state, "http://s2", [])  # 1 in flight: 18 - 8 > 0, still s2
    assert router.pick(state, again) == "http://s2"
    router.started(state, "http://s2", [])  # 2 in flight: 18 - 16 > 0
    assert router.pick(state, again) == "http://s2"
    router.started(state, "http://s2", [])  # 3 in flight: 18 - 24 < 0, load wins
    assert router.pick(state, again) == "http://s1"


def test_block_hashes_are_chained_and_the_index_is_lru_bounded() -> None:
    a = block_hashes("x" * 64 + "y" * 64)
    b = block_hashes("z" * 64 + "y" * 64)
    assert len(a) == 2 and a[1] != b[1]  # same second block, different prefix
    assert block_hashes("short") == []
    index = PrefixIndex(capacity=100)
    for i in range(1000):
        index.record(block_hashes(f"{i:064d}" * 3), f"http://r{i % 3}")
    assert len(index) == 100
    index.forget("http://r0")
    assert len(index) < 100


def test_set_routes_keeps_counts_and_wakes_waiters() -> None:
    empty = ModelRoute("team", "chat", versions=(VersionTarget("stable", 100),))
    router = Router([empty])
    state = router.state(empty, "stable")
    assert state is not None and not state.ready.is_set() and router.pick(state, []) is None
    router.set_routes([ModelRoute("team", "chat", versions=(VersionTarget("stable", 100, ("http://a",)),))])
    assert router.state(empty, "stable") is state and state.ready.is_set()
    router.started(state, "http://a", [])
    router.set_routes([ModelRoute("team", "chat", versions=(VersionTarget("stable", 100, ("http://a", "http://b")),))])
    assert state.outstanding == {"http://a": 1, "http://b": 0}
    router.set_routes([])
    assert router.lookup("team/chat") is None and router.state(empty, "stable") is None


def test_pod_queue_and_kv_use_steer_away_from_a_busy_replica() -> None:
    router = Router([CANARY], seed=1, load_penalty=8.0)
    state = router.state(CANARY, "stable")
    assert state is not None
    system = "You are a careful assistant. " * 40  # 18 matched blocks on s2
    hashes = block_hashes(system + "question")
    router.started(state, "http://s2", hashes)
    router.finished(state, "http://s2")
    router.pod_load = {"http://s2": (1.0, 0.5)}  # queued 1, half the cache: 18 - 8 x 2 > 0
    assert router.pick(state, hashes) == "http://s2"
    router.pod_load = {"http://s2": (2.0, 0.5)}  # other gateways' load: 18 - 8 x 3 < 0
    assert router.pick(state, hashes) == "http://s1"
    router.pod_load = {"http://s1": (0.0, 0.9), "http://s2": (0.0, 0.1)}
    assert all(router.pick(state, []) == "http://s2" for _ in range(10))
