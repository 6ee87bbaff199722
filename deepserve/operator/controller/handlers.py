"""kopf handlers: thin glue from watch events to the one idempotent reconcile.

Create, update, resume (operator restart) and a periodic resync (one light daemon per model,
which also registers its autoscaler with one shared loop) on InferenceModels, and every event
of an owned object (drift, deletes, rollout progress), all run
:func:`deepserve.operator.controller.reconcile.reconcile` for the model. Indexes keep small
projections of owned objects, nodes, GPU pods and GPUNodePools in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from deepserve.operator import placement as planner
from deepserve.operator.api.crds import GROUP, VERSION
from deepserve.operator.api.views import pool_views
from deepserve.operator.autoscaler.io import ActivatorHeld
from deepserve.operator.autoscaler.loop import AutoscalerOptions
from deepserve.operator.builders import Settings
from deepserve.operator.builders.context import LABEL_MODEL, MANAGED_BY
from deepserve.operator.controller.autoscaling import AutoscalerRounds, ModelScaling
from deepserve.operator.controller.observed import (
    child_ref,
    deployment_state,
    marker_of,
    owner_key,
    pod_state,
)
from deepserve.operator.controller.planning import ranked_candidates
from deepserve.operator.controller.pools import pool_status
from deepserve.operator.controller.reconcile import (
    AppliedCache,
    ChildRejected,
    DecisionCache,
    Observed,
    needs_placement,
    older_marker,
    reconcile,
)
from deepserve.operator.controller.snapshot import (
    TtlCache,
    flatten,
    gpu_pod_snapshot,
    model_snapshot,
    node_snapshot,
    plain,
)
from deepserve.operator.controller.usage_credentials import UsageCredentials
from deepserve.operator.kube import Kube, KubeError, connection_fields
from deepserve.operator.metering.credentials import IngestKeyFile
from deepserve.operator.sharding import ShardSet

log = logging.getLogger(__name__)
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
MODELS = (GROUP, VERSION, "inferencemodels")
CHILD_KINDS = {"configmaps": ("", "v1"), "services": ("", "v1"), "deployments": ("apps", "v1"),
               "poddisruptionbudgets": ("policy", "v1"), "networkpolicies": ("networking.k8s.io", "v1")}
ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
LEADERWORKERSETS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")  # multi-node replicas


@dataclass(frozen=True)
class OperatorOptions:
    """Flags of `deepserve operator run` that the handlers need."""

    kubeconfig: str | None = None
    settings: Settings = field(default_factory=Settings)
    resync_seconds: float = 60.0
    pool_cache_seconds: float = 2.0
    autoscaler: AutoscalerOptions | None = field(default_factory=lambda: AutoscalerOptions(tick_s=2.0))
    # The ingest key file (a mounted Secret): each model gets a usage write-credential Secret
    ingest_key_file: str | None = None
    # --shards: this replica reconciles only the models of the shards it holds (sharding.py)
    shards: ShardSet | None = None


RESERVATION_S = 120.0  # how long a new placement holds its GPUs while its pods are being created


@dataclass(frozen=True)
class Reservation:
    """GPUs a new placement promised on a pool before its pods exist."""

    namespace: str
    name: str
    pool: str
    gpus: int
    until: float


@dataclass
class ControllerState:
    """Per-process state, kept in kopf's memo (not module globals)."""

    kube: Kube
    settings: Settings
    applied: AppliedCache = field(default_factory=dict)
    last_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> status written
    locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)
    pools: TtlCache = field(default_factory=lambda: TtlCache(2.0))
    discovery: planner.PoolDiscovery = field(default_factory=planner.PoolDiscovery)  # remembers unchanged nodes' facts
    decisions: DecisionCache = field(default_factory=dict)
    projections: dict[tuple[str, str, str], Any] = field(default_factory=dict)  # last status-relevant view
    planning: threading.Lock = field(default_factory=threading.Lock)  # one new placement at a time
    reservations: dict[str, Reservation] = field(default_factory=dict)  # model uid -> GPUs promised
    held: Callable[[str, str], int] | None = None  # requests the activators hold, per (namespace, model)
    rounds: AutoscalerRounds | None = None  # every model's autoscaler tick, made by the first daemon
    credentials: UsageCredentials | None = None  # per-model usage write credentials (--ingest-key-file)
    shards: ShardSet | None = None  # the shards this replica holds (--shards); None: every object is ours
    shards_changed: asyncio.Event = field(default_factory=asyncio.Event)  # set, then replaced, on each change

    def owns(self, namespace: str, name: str) -> bool:
        """Whether this replica reconciles ``namespace/name`` (always, unless sharded)."""
        return self.shards is None or self.shards.owns(namespace, name)

    def acting(self, key: tuple[str, str]) -> contextlib.AbstractContextManager[bool]:
        """Bracket one reconcile: False when the model's shard is not ours (then do nothing)."""
        return self.shards.acting(*key) if self.shards is not None else contextlib.nullcontext(True)

    def reserved(self, gpu_pods: list[dict[str, Any]], exclude_uid: str | None = None) -> dict[str, int]:
        """GPUs per pool promised to new placements of other models and not yet held by their pods.

        A model's pods (bound or pending) already count against the pool in discover_pools, so
        only the remainder is reserved; a reservation ends when its pods exist or it expires.
        """
        if not self.reservations:  # the steady state: no new placement in the last moments
            return {}
        now = time.monotonic()
        seen: dict[tuple[str, str], int] = {}
        for pod in gpu_pods:
            md = pod.get("metadata") or {}
            model = (md.get("labels") or {}).get(LABEL_MODEL)
            if model:
                k = (md.get("namespace", ""), model)
                seen[k] = seen.get(k, 0) + planner.pod_gpus(pod)
        out: dict[str, int] = {}
        with self.guard:
            for uid, r in list(self.reservations.items()):
                left = r.gpus - seen.get((r.namespace, r.name), 0)
                if left <= 0 or now > r.until:
                    self.reservations.pop(uid, None)
                elif uid != exclude_uid:
                    out[r.pool] = out.get(r.pool, 0) + left
        return out

    def lock_for(self, key: tuple[str, str]) -> threading.Lock:
        """The lock serialising reconciles of one model."""
        with self.guard:
            return self.locks.setdefault(key, threading.Lock())

    def forget(self, key: tuple[str, str], uid: str | None) -> None:
        """Drop memory of a deleted model."""
        with self.guard:
            self.locks.pop(key, None)
            if uid:
                self.reservations.pop(uid, None)
                self.last_status.pop(uid, None)
                self.decisions.pop(uid, None)
            if self.credentials is not None:
                self.credentials.forget(*key)
            for cache in (self.applied, self.projections):
                for k in [k for k in cache if k[0] == key[0] and k[2].startswith(key[1])]:
                    cache.pop(k, None)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def discovered_pools(indexes: dict[str, Any], discovery: planner.PoolDiscovery | None = None) -> list[Any]:
    """Pools from Node labels and GPUNodePool objects (planner.discover_pools; ``discovery``: the
    same result, reading only nodes that changed since its last call: 5,000 nodes took ~75 ms)."""
    found = (discovery or planner.discover_pools)(flatten(indexes.get("ds_nodes")), flatten(indexes.get("ds_gpu_pods")),
                                   flatten(indexes.get("ds_pools")))
    for warning in found.unknown:
        log.debug("pool discovery: %s", warning)
    return list(found.pools)


def observe(model: dict[str, Any], indexes: dict[str, Any], state: ControllerState,
            fresh: bool = False) -> Observed:
    """Assemble the snapshot of one model from the indexes.

    ``fresh``: a new placement is about to be made, so pools are read now rather than from
    the shared cache, in the same moment as the reservations.
    """
    key = (model["metadata"]["namespace"], model["metadata"]["name"])
    children = {}
    for name in ("ds_configmaps", "ds_services", "ds_deployments", "ds_poddisruptionbudgets", "ds_httproutes",
                 "ds_leaderworkersets", "ds_networkpolicies"):
        idx = indexes.get(name)
        for ref in (idx.get(key, []) if idx else []):
            children[ref.key] = ref
    deployments = {d.version: d for d in (indexes["ds_deployment_states"].get(key, []))}
    pods = tuple(indexes["ds_model_pods"].get(key, []))
    pools = (discovered_pools(indexes, state.discovery) if fresh
             else state.pools.get(lambda: discovered_pools(indexes, state.discovery)))
    reserved = state.reserved(flatten(indexes.get("ds_gpu_pods")), model["metadata"].get("uid"))
    if reserved:
        pools = planner.with_reservations(pools, reserved)
    tolerations = {p.name: p.tolerations for p in pool_views(flatten(indexes.get("ds_pools")))}
    return Observed(model=model, children=children, deployments=deployments, pods=pods, pools=pools,
                    pool_tolerations=tolerations)


def run_reconcile(model: dict[str, Any], indexes: dict[str, Any], state: ControllerState) -> None:
    """Reconcile one model under its lock and post the Events it decided."""
    md = model["metadata"]
    key = (md["namespace"], md["name"])
    # a new placement reads free capacity and then takes some: one at a time, so models created
    # together see each other's GPUs (the planning lock is always taken before a model's lock)
    fresh = needs_placement(model, state.last_status.get(md["uid"]))
    with state.acting(key) as ours, state.planning if fresh and ours else contextlib.nullcontext(), \
            state.lock_for(key):
        if not ours:  # another replica holds this model's shard
            return
        observed = observe(model, indexes, state, fresh)
        result, status = reconcile(observed, state.kube, state.settings, state.applied, _now(),
                                   state.last_status.get(md["uid"]), clock=time.monotonic(),
                                   decisions=state.decisions, credentials=state.credentials)
        state.last_status[md["uid"]] = status
        if result.placed is not None:
            pool, gpus = result.placed
            offer = next((p for p in observed.pools if p.name == pool), None)
            log.info("%s/%s: placed on pool %s (%d GPU(s)); the pool had %s free GPU(s), %s reserved for "
                     "other new placements", *key, pool, gpus, getattr(offer, "free_gpus", "?"),
                     {r.pool: r.gpus for u, r in state.reservations.items() if u != md["uid"]} or "none")
            with state.guard:
                state.reservations[md["uid"]] = Reservation(md["namespace"], md["name"], pool, gpus,
                                                            time.monotonic() + RESERVATION_S)
    for type_, reason, message in result.events:
        # a plain dict with apiVersion/kind/metadata is a valid kopf body
        kopf.event(model, type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]
    if result.applied or result.deleted:
        log.info("%s/%s: applied %d, deleted %d", *key, len(result.applied), len(result.deleted))
    if result.failure is not None:
        raise result.failure


REJECTED_BACKOFF_S = (10, 20, 40, 80, 160, 300)  # retries of a refused child, then every 5 minutes


def _model_handler(body: Any, memo: Any, retry: int = 0, **kwargs: Any) -> None:
    try:
        run_reconcile(model_snapshot(body), kwargs, memo.deepserve)
    except ChildRejected as e:
        # expected: status and a Warning Event already say why; kopf logs one line, no traceback
        delay = REJECTED_BACKOFF_S[min(retry, len(REJECTED_BACKOFF_S) - 1)]
        raise kopf.TemporaryError(f"the API server refused {e}; retrying in {delay}s", delay=delay) from None
    except KubeError as e:
        if e.status in (409, 429, 500, 503, 504) or e.status == 0:
            raise kopf.TemporaryError(f"API server: {e}", delay=5) from e
        md = body.get("metadata", {})
        if e.status == 404 and memo.deepserve.kube.get(f"{GROUP}/{VERSION}", "InferenceModel", md.get("name"),
                                                        md.get("namespace")) is None:
            # the model went away while this reconcile ran; its DELETED event ends the story,
            # so a timer or resume handler has nothing left to retry
            log.info("%s/%s: deleted while reconciling (%s)", md.get("namespace"), md.get("name"), e)
            return
        raise


def _echo_or_unchanged(event_type: str, body: Any, state: ControllerState) -> bool:
    """Whether an owned object's watch event carries nothing new for its model.

    Echoes of our own writes (same change marker) and status updates that leave the
    projection unchanged are dropped here, in the event loop, before a worker thread is
    taken: during a creation storm most events are such echoes.
    """
    if event_type == "DELETED":
        return False
    md = body.get("metadata", {})
    kind, ns, name = body.get("kind", ""), md.get("namespace", ""), md.get("name", "")
    if kind == "Pod":
        projection: Any = pod_state(body)
    else:
        cached = state.applied.get((ns, kind, name))
        marker = marker_of(body)
        if cached is None or not (marker == cached[1] or older_marker(marker, cached[1])):
            return False  # unknown to this process, or edited by someone else
        if kind != "Deployment":
            return True
        projection = deployment_state(body)
    key = (ns, kind, name)
    if state.projections.get(key) == projection:
        return True
    state.projections[key] = projection
    return False


async def _owned_event(event: Any, body: Any, memo: Any, **kwargs: Any) -> None:
    key = owner_key(body)
    models = kwargs.get("ds_models")
    if key is None or models is None or key not in models:
        return
    state: ControllerState = memo.deepserve
    if not state.owns(*key) or _echo_or_unchanged(event.get("type") or "", body, state):
        return
    model = next(iter(models[key]))
    try:
        await asyncio.to_thread(run_reconcile, model, kwargs, state)
    except ChildRejected as e:  # in status and an Event already; the handler's backoff retries
        log.debug("%s/%s: reconcile after %s event: the API server refused %s", *key, body.get("kind"), e)
    except KubeError as e:  # the timer and later events retry
        log.warning("%s/%s: reconcile after %s event failed: %s", *key, body.get("kind"), e)


DAEMON_CHECK_S = 30.0  # how often a model's daemon looks whether its model is still there


async def _model_daemon(options: OperatorOptions, name: str, namespace: str, memo: Any, stopped: kopf.DaemonStopped,
                        **kwargs: Any) -> None:
    """Daemon body, one per model: register its autoscaler with the shared rounds and run the
    periodic resync, until stopped or the model is gone.

    One light daemon instead of a kopf timer plus a ticking daemon per model: each spawned
    kopf task with its timers costs memory per model (bench_operator.py, docs/operator.md).
    """
    state: ControllerState = memo.deepserve
    key, models = (namespace, name), kwargs["ds_models"]
    scaling = None
    if options.autoscaler is not None:
        if state.rounds is None:  # a model of a shard not ours is skipped like a model gone
            state.rounds = AutoscalerRounds(options.autoscaler.tick_s,
                                            lambda k: next(iter(models[k]), None)
                                            if k in models and state.owns(*k) else None)
        scaling = ModelScaling(state.kube, namespace, name, options.autoscaler,
                               pools=lambda: state.pools.get(lambda: discovered_pools(kwargs, state.discovery)),
                               ranked=ranked_candidates, held=state.held)
        state.rounds.add(key, scaling)
    loop = asyncio.get_running_loop()
    resync_at = loop.time() + options.resync_seconds if options.resync_seconds > 0 else float("inf")
    ours = state.owns(*key)
    try:
        while key in models and not stopped:  # kopf may not stop daemons of objects deleted without a finalizer
            await _wait_stop_or_shards(stopped, state, max(0.0, min(DAEMON_CHECK_S, resync_at - loop.time())))
            if stopped or key not in models:
                continue
            ours, was_ours = state.owns(*key), ours
            if was_ours and not ours:  # another replica reconciles it now: our memory of it goes stale
                state.forget(key, next(iter(models[key]))["metadata"].get("uid"))
            # a shard just gained (or a model this replica never reconciled): reconcile now, so
            # nothing created or changed while the previous holder was away is missed
            relist = ours and next(iter(models[key]))["metadata"].get("uid") not in state.last_status
            if not relist and (loop.time() < resync_at or not ours):
                continue
            resync_at = loop.time() + options.resync_seconds
            try:
                await asyncio.to_thread(run_reconcile, next(iter(models[key])), kwargs, state)
            except ChildRejected as e:  # reported in status and an Event when it began
                log.debug("%s/%s: periodic resync: the API server refused %s", namespace, name, e)
            except Exception as e:  # the next resync and the next watch event retry
                log.warning("%s/%s: periodic resync failed: %s", namespace, name, e)
    finally:
        if scaling is not None and state.rounds is not None:
            state.rounds.remove(key, scaling)


async def _wait_stop_or_shards(stopped: kopf.DaemonStopped, state: ControllerState, timeout: float) -> None:
    """Sleep up to ``timeout``, waking early when the daemon is stopped or (sharded) when this
    replica's shards change."""
    if state.shards is None:
        await stopped.wait(timeout)
        return

    async def stop_wait() -> None:
        await stopped.wait(timeout)

    waits = {asyncio.ensure_future(stop_wait()), asyncio.ensure_future(state.shards_changed.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


# Index functions are coroutines although they do no I/O: kopf runs a plain function on its
# thread pool, so every watch event of every object would take a thread hop per index while
# its full body waits in kopf's per-object queue. They read the body in place (no deep copy).
async def _index_model(body: Any, **_: Any) -> dict[Any, Any]:
    return {(body["metadata"]["namespace"], body["metadata"]["name"]): model_snapshot(body)}


async def _index_child(body: Any, **_: Any) -> dict[Any, Any] | None:
    return {k: child_ref(body)} if (k := owner_key(body)) else None


async def _index_deployment_state(body: Any, **_: Any) -> dict[Any, Any] | None:
    return {k: deployment_state(body)} if (k := owner_key(body)) else None


async def _index_model_pod(body: Any, **_: Any) -> dict[Any, Any] | None:
    return {k: pod_state(body)} if (k := owner_key(body)) else None


async def _index_gpu_pod(body: Any, **_: Any) -> dict[Any, Any] | None:
    return {None: p} if (p := gpu_pod_snapshot(body)) else None


async def _index_node(body: Any, **_: Any) -> dict[Any, Any]:
    return {None: node_snapshot(body)}


async def _index_pool(body: Any, **_: Any) -> dict[Any, Any]:
    return {None: plain(body)}


def _in_shards(shards: ShardSet) -> Callable[..., bool]:
    """A kopf ``when=`` filter: the object's shard is held by this replica."""
    def when(name: str, namespace: str | None, **_: Any) -> bool:
        return shards.owns(namespace or "", name)
    return when


def _index(registry: kopf.OperatorRegistry, resource: tuple[str, str, str], id_: str,
           fn: Callable[..., Any], labels: dict[str, str] | None = None) -> None:
    kopf.index(*resource, id=id_, registry=registry, labels=labels)(fn)  # type: ignore[arg-type]


def _without_finalizer(registry: kopf.OperatorRegistry, handler_id: str) -> None:
    """Let a timer or daemon run without kopf's finalizer.

    kopf marks every timer and daemon as needing a finalizer (kopf/on.py), so deleting a
    model would hang while the operator is down. Neither the model daemon (resync and
    autoscaler) nor the pool status timer cleans up anything outside the cluster; the model
    daemon ends by itself when its model leaves the index.
    """
    spawning = registry._spawning
    spawning._handlers = [dataclasses.replace(h, requires_finalizer=False) if h.id == handler_id else h
                          for h in spawning._handlers]


def register(registry: kopf.OperatorRegistry, options: OperatorOptions, gateway_api: bool) -> None:
    """Register every handler and index of the operator in ``registry``."""

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="deepserve.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="deepserve.io", key="last-handled-configuration")
        settings.posting.level = logging.WARNING
        if not log.isEnabledFor(logging.DEBUG):  # "Handler succeeded" per watch event is noise
            logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        settings.execution.max_workers = 8
        settings.watching.server_timeout = 600
        settings.networking.request_timeout = 60
        kube = Kube.from_kubeconfig(options.kubeconfig)
        activators = options.autoscaler.activators if options.autoscaler is not None else {}
        credentials = None
        if options.ingest_key_file:  # read here, in the operator process; never logged
            credentials = UsageCredentials(IngestKeyFile(options.ingest_key_file))
        memo.deepserve = ControllerState(kube=kube, settings=options.settings,
                                         pools=TtlCache(options.pool_cache_seconds),
                                         held=ActivatorHeld(activators) if activators else None,
                                         credentials=credentials, shards=options.shards)

    if options.shards is not None:
        @kopf.on.startup(registry=registry)
        async def follow_shards(memo: Any, **_: Any) -> None:
            state: ControllerState = memo.deepserve
            loop = asyncio.get_running_loop()

            def changed() -> None:  # wake every model daemon (they reconcile what they gained)
                event, state.shards_changed = state.shards_changed, asyncio.Event()
                event.set()

            def listener(gained: frozenset[int], lost: frozenset[int]) -> None:  # on the Lease thread
                loop.call_soon_threadsafe(changed)

            assert options.shards is not None
            options.shards.subscribe(listener)

    @kopf.on.login(registry=registry)
    def login(settings: kopf.OperatorSettings, **kwargs: Any) -> Any:
        if not options.kubeconfig:
            return kopf.login_via_client(settings=settings, **kwargs)  # in-cluster or the default kubeconfig
        return kopf.ConnectionInfo(**connection_fields(options.kubeconfig), trust_env=settings.networking.trust_env)

    @kopf.on.cleanup(registry=registry)
    def close(memo: Any, **_: Any) -> None:
        memo.deepserve.kube.close()

    _index(registry, MODELS, "ds_models", _index_model)
    for plural, (group, version) in CHILD_KINDS.items():
        _index(registry, (group, version, plural), f"ds_{plural}", _index_child, MANAGED)
        kopf.on.event(group, version, plural, registry=registry, labels=MANAGED,
                      id=f"ds_owned_{plural}")(_owned_event)
    if gateway_api:
        _index(registry, ROUTES, "ds_httproutes", _index_child, MANAGED)
        kopf.on.event(*ROUTES, registry=registry, labels=MANAGED, id="ds_owned_httproutes")(_owned_event)
    if options.settings.leaderworkerset:
        _index(registry, LEADERWORKERSETS, "ds_leaderworkersets", _index_child, MANAGED)
        kopf.on.event(*LEADERWORKERSETS, registry=registry, labels=MANAGED,
                      id="ds_owned_leaderworkersets")(_owned_event)
    _index(registry, ("apps", "v1", "deployments"), "ds_deployment_states", _index_deployment_state, MANAGED)
    _index(registry, ("", "v1", "pods"), "ds_model_pods", _index_model_pod, MANAGED)
    kopf.on.event("", "v1", "pods", registry=registry, labels=MANAGED, id="ds_owned_pods")(_owned_event)
    _index(registry, ("", "v1", "pods"), "ds_gpu_pods", _index_gpu_pod)
    _index(registry, ("", "v1", "nodes"), "ds_nodes", _index_node)
    _index(registry, (GROUP, VERSION, "gpunodepools"), "ds_pools", _index_pool)

    # sharded: kopf is blind to models of shards not ours (no handler runs, no state is stored)
    ours = None if options.shards is None else _in_shards(options.shards)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*MODELS, registry=registry, id=f"ds_reconcile_{decorator.__name__}", when=ours)(_model_handler)
    if options.resync_seconds > 0 or options.autoscaler is not None:
        # stop: the daemon only leaves the shared rounds; a tick or resync in flight finishes
        @kopf.daemon(*MODELS, registry=registry, id="ds_model_loop", cancellation_backoff=3, cancellation_timeout=5)
        async def model_loop(name: str, namespace: str | None, memo: Any, stopped: kopf.DaemonStopped,
                             **kwargs: Any) -> None:
            await _model_daemon(options, name, namespace or "", memo, stopped, **kwargs)

        _without_finalizer(registry, "ds_model_loop")

    @kopf.on.event(*MODELS, registry=registry, id="ds_forget")
    async def forget(event: Any, body: Any, memo: Any, **_: Any) -> None:
        if event.get("type") == "DELETED":
            md = body.get("metadata", {})
            memo.deepserve.forget((md.get("namespace"), md.get("name")), md.get("uid"))

    @kopf.timer(GROUP, VERSION, "gpunodepools", registry=registry, interval=30, id="ds_pool_status")
    def pool_timer(body: Any, memo: Any, **kwargs: Any) -> None:
        state: ControllerState = memo.deepserve
        if not state.owns("", body["metadata"]["name"]):  # sharded: pools are hashed into shards too
            return
        pools = state.pools.get(lambda: discovered_pools(kwargs, state.discovery))
        status = pool_status(plain(body), flatten(kwargs.get("ds_nodes")), flatten(kwargs.get("ds_gpu_pods")),
                             pools, _now())
        if status != (body.get("status") or {}):
            try:
                state.kube.patch_status(f"{GROUP}/{VERSION}", "GPUNodePool", body["metadata"]["name"], None, status)
            except KubeError as e:
                if e.status != 404:  # 404: the pool was deleted after the timer fired; nothing to report
                    raise

    _without_finalizer(registry, "ds_pool_status")
