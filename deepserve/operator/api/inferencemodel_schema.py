"""The InferenceModel schema (deepserve.io/v1alpha1): the one source of truth.

``crds/inferencemodels.deepserve.io.yaml``, the chart's copy, ``kubectl explain`` and the
typed views in :mod:`deepserve.operator.api.views` all come from the data here.
"""

from __future__ import annotations

from typing import Any

from deepserve.operator.api.quantity import bounded_quantity
from deepserve.operator.api.schema_types import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    IMAGE_REFERENCE,
    LABEL_VALUE,
    QUALIFIED_NAME,
    Schema,
    array,
    boolean,
    condition_schema,
    integer,
    number,
    obj,
    rule,
    string,
)
from deepserve.operator.api.source_rules import SOURCE_RULES, URI_RULES

SOURCE_SCHEMES = ("pvc", "hf", "s3", "builtin")
PRECISIONS = ["auto", "fp32", "bf16", "fp16", "fp8"]
STRATEGIES = ["cost", "latency", "throughput"]
SCALE_METRICS = ["inflightRequests", "queueTimeMicroseconds", "tokensPerSecond"]
MAX_MODEL_NAME = 40
MAX_VERSION_NAME = 20
MAX_VERSIONS = 8
MAX_CPU = "4096"  # cores per replica
MAX_MEMORY = "64Ti"  # per replica
MAX_TOKENS_PER_S = 1e6  # an SLO beyond any accelerator is a typo, not a goal
MAX_TTFT_MS = 3.6e6  # one hour
MAX_SCALE_TARGET = 1e9
ALIAS = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"


SHAPE = obj(
    "Model shape for the placement planner when it cannot be read from the source (hf://, s3://"
    " and pvc:// sources are not fetched by the operator). Omit for builtin:// sources.",
    {
        "totalParams": integer("Total parameter count.", minimum=1),
        "activeParams": integer("Parameters active per token (MoE); defaults to totalParams.", minimum=1),
        "layers": integer("Transformer layers.", minimum=1, maximum=1024),
        "hiddenSize": integer("Hidden (model) dimension.", minimum=1),
        "heads": integer("Attention heads.", minimum=1, maximum=1024),
        "kvHeads": integer("Key/value heads (GQA); defaults to heads.", minimum=1, maximum=1024),
        "headDim": integer("Per-head dimension; defaults to hiddenSize / heads.", minimum=1),
        "vocabSize": integer("Vocabulary size.", minimum=1),
        "maxContext": integer("Longest context the model supports, in tokens.", minimum=1),
        "experts": integer("MoE routed experts (0 when dense).", minimum=0, default=0),
        "expertsPerToken": integer("MoE experts active per token.", minimum=0, default=0),
        "kvLoraRank": integer("MLA compressed KV rank (0 when not MLA).", minimum=0, default=0),
        "qkRopeHeadDim": integer("MLA decoupled RoPE head dimension (0 when not MLA).", minimum=0, default=0),
    },
    required=["totalParams", "layers", "hiddenSize", "heads", "vocabSize"],
    rules=[
        rule("!has(self.kvHeads) || self.heads % self.kvHeads == 0",
             "source.shape.kvHeads must divide source.shape.heads", field_path=".kvHeads"),
        rule("!has(self.activeParams) || self.activeParams <= self.totalParams",
             "source.shape.activeParams must be <= source.shape.totalParams", field_path=".activeParams"),
    ],
)


def source_schema(description: str) -> Schema:
    """Where the weights come from; shared by spec.source and spec.versions[].source."""
    return obj(
        description,
        {
            "uri": string(
                "Model location: pvc://<claim>/<path> (a PersistentVolumeClaim in this namespace), "
                "hf://<org>/<name> (Hugging Face Hub), s3://<bucket>/<prefix>, or "
                "builtin://tiny-<arch> (a deterministic tiny checkpoint the engine creates; for tests "
                "and demos).",
                max_length=1024,
                rules=URI_RULES,
            ),
            "format": string(
                "Checkpoint format; auto detects safetensors first.",
                enum=["auto", "safetensors", "pytorch"],
                default="auto",
            ),
            "revision": string("Hugging Face revision (branch, tag or commit) for hf:// sources.",
                               max_length=128, pattern=r"^[A-Za-z0-9._/-]+$"),
            "credentialsSecret": string(
                "Name of a Secret in this namespace whose keys become environment variables of the "
                "engine (HF_TOKEN, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).",
                pattern=DNS_SUBDOMAIN,
            ),
            "shape": SHAPE,
        },
        required=["uri"],
        rules=SOURCE_RULES,
    )


SPARSE_ATTENTION = obj(
    "Hierarchical attention gating: attend to the top-k key blocks plus sink and local tokens.",
    {
        "enabled": boolean("Turn sparse attention on.", default=False),
        "topK": integer("Key blocks kept per query (the attention budget).", minimum=1, maximum=65536, default=64),
        "sinks": integer("Leading tokens always attended to.", minimum=0, maximum=4096, default=4),
        "localWindow": integer("Most recent tokens always attended to.", minimum=0, maximum=1048576, default=256),
    },
)

ENGINE = obj(
    "Engine options, passed to the deepserve engine as EngineOptions.",
    {
        "precision": string("Precision policy: auto lets the engine choose per layer within errorBound.",
                            enum=PRECISIONS, default="auto"),
        "errorBound": number("Largest tolerated relative output error for the auto precision policy.",
                             minimum=0, exclusive_minimum=True, maximum=0.999, default=0.007),
        "maxBatchSize": integer("Largest batch Triton forms (Triton max_batch_size).", minimum=1,
                                maximum=1024, default=8),
        "maxQueueDelayMicroseconds": integer(
            "Triton dynamic batching: longest a request waits for a batch to fill.",
            minimum=0, maximum=10_000_000, default=100),
        "maxInputTokens": integer("Longest accepted prompt, in tokens.", minimum=1, maximum=4_194_304,
                                  default=2048),
        "maxNewTokens": integer("Most tokens generated per request.", minimum=1, maximum=4_194_304,
                                default=512),
        "kvCacheTokens": integer("KV cache capacity in tokens per replica; unset lets the engine size it.",
                                 minimum=1, maximum=268_435_456),
        "prefixCacheMiB": integer("GPU memory for the prefix cache, MiB (0 turns it off).", minimum=0,
                                  maximum=4_194_304, default=0),
        "hostCacheMiB": integer("Host memory for the offloaded prefix cache, MiB.", minimum=0,
                                maximum=16_777_216, default=0),
        "tensorParallel": {**integer("Tensor-parallel degree (a power of two); unset lets the planner choose."),
                           "enum": [1, 2, 4, 8, 16, 32, 64]},
        "pipelineParallel": integer("Pipeline-parallel degree.", minimum=1, maximum=64, default=1),
        "sparseAttention": SPARSE_ATTENTION,
    },
    rules=[
        rule("!has(self.kvCacheTokens) || self.kvCacheTokens >= self.maxInputTokens + self.maxNewTokens",
             "engine.kvCacheTokens must hold one full sequence (>= maxInputTokens + maxNewTokens)",
             field_path=".kvCacheTokens"),
    ],
    default={},
)

RESOURCES = obj(
    "Compute per replica.",
    {
        "gpusPerReplica": integer("GPUs per replica; unset lets the planner choose (tensorParallel x "
                                  "pipelineParallel).", minimum=1, maximum=64),
        "maxTensorParallel": integer("Largest tensor-parallel degree the planner may choose.",
                                     minimum=1, maximum=64, default=8),
        "cpu": bounded_quantity("CPU request per replica.", "resources.cpu", maximum=MAX_CPU, default="2"),
        "memory": bounded_quantity("Memory request and limit per replica.", "resources.memory",
                                   maximum=MAX_MEMORY, default="8Gi"),
        "sharedMemory": bounded_quantity("Size of the memory-backed /dev/shm (Triton's Python backend uses it).",
                                         "resources.sharedMemory", maximum=MAX_MEMORY, default="1Gi"),
    },
    default={},
)

# One toleration rule for InferenceModel and GPUNodePool (the pod API's own rules: a key is a
# label key, Equal needs a key, Exists takes no value).
TOLERATION = obj(
    "A toleration added to the pods.",
    {
        "key": string("Taint key (a label key).", max_length=316, pattern=QUALIFIED_NAME),
        "operator": string("Exists or Equal.", enum=["Exists", "Equal"], default="Equal"),
        "value": string("Taint value (a label value).", max_length=63, pattern=LABEL_VALUE),
        "effect": string("Taint effect; empty matches all.", enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    },
    rules=[
        rule("self.operator == 'Exists' || has(self.key)",
             "tolerations[].key is required unless operator is Exists", field_path=".key"),
        rule("self.operator != 'Exists' || !has(self.value) || self.value == ''",
             "tolerations[].value must be empty when operator is Exists", field_path=".value"),
    ],
)

PLACEMENT = obj(
    "Where replicas may run and what the planner optimises.",
    {
        "strategy": string("What the planner optimises: cost per token, latency or throughput.",
                           enum=STRATEGIES, default="cost"),
        "allowedPools": array("Pools (GPUNodePool or discovered) the planner may choose; empty = any.",
                              string("Pool name.", max_length=63), max_items=32, list_type="set"),
        "concurrency": integer("Concurrent requests one replica should sustain.", minimum=1,
                               maximum=65536, default=1),
        "slo": obj(
            "Service level objective; pools that cannot meet it are rejected.",
            {
                "minTokensPerSecond": number("Decode tokens/s each request needs.", minimum=0,
                                             exclusive_minimum=True, maximum=MAX_TOKENS_PER_S),
                "maxTimeToFirstTokenMs": number("Largest acceptable time to first token, ms.",
                                                minimum=0, exclusive_minimum=True, maximum=MAX_TTFT_MS),
            },
        ),
        "tolerations": array("Extra tolerations (the nvidia.com/gpu taint is always tolerated).",
                             TOLERATION, max_items=16),
    },
    default={},
)

SCALING = obj(
    "Replica bounds and the autoscaling target. spec.scaling.replicas is the scale subresource.",
    {
        "minReplicas": integer("Fewest replicas (0 allows scale to zero).", minimum=0, maximum=1000, default=1),
        "maxReplicas": integer("Most replicas; defaults to minReplicas.", minimum=0, maximum=1000),
        "replicas": integer("Desired replicas, written by `kubectl scale`, HPA, KEDA or the deepserve "
                            "autoscaler; clamped to [minReplicas, maxReplicas]; unset = minReplicas.",
                            minimum=0, maximum=1000),
        "target": obj(
            "Load each replica should carry.",
            {
                "metric": string("Triton metric the target is expressed in.", enum=SCALE_METRICS,
                                 default="inflightRequests"),
                "value": number("Target value per replica.", minimum=0, exclusive_minimum=True,
                                maximum=MAX_SCALE_TARGET),
            },
            required=["value"],
        ),
        "scaleToZero": obj(
            "Scale to zero replicas after an idle period.",
            {
                "enabled": boolean("Allow scaling to zero.", default=False),
                "idleSeconds": integer("Seconds without requests before scaling to zero.", minimum=30,
                                       maximum=86400, default=300),
            },
        ),
    },
    rules=[
        rule("!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
             "scaling.minReplicas must be <= scaling.maxReplicas", field_path=".minReplicas"),
        rule("!has(self.scaleToZero) || !self.scaleToZero.enabled || self.minReplicas == 0",
             "scaling.scaleToZero.enabled requires scaling.minReplicas: 0", field_path=".scaleToZero.enabled"),
    ],
    default={},
)

VERSION = obj(
    "A version of the model with its share of the traffic; unset fields come from the model.",
    {
        "name": string("Version name (a DNS label), part of child object names.", pattern=DNS_LABEL,
                       max_length=MAX_VERSION_NAME),
        "weight": integer("Percent of traffic routed to this version.", minimum=0, maximum=100),
        "source": source_schema("Weights for this version; defaults to spec.source."),
        "image": string("Engine image for this version; defaults to spec.runtime.image.", max_length=512,
                        pattern=IMAGE_REFERENCE),
        "precision": string("Precision policy for this version.", enum=PRECISIONS),
        "sparseAttention": SPARSE_ATTENTION,
    },
    required=["name", "weight"],
)

RUNTIME = obj(
    "The Triton runtime.",
    {
        "image": string("Triton + deepserve engine image; defaults to the operator's --engine-image.",
                        max_length=512, pattern=IMAGE_REFERENCE),
        "imagePullPolicy": string("Image pull policy.", enum=["Always", "IfNotPresent", "Never"],
                                  default="IfNotPresent"),
        "exitTimeoutSeconds": integer("Triton --exit-timeout-secs: how long in-flight requests may "
                                      "finish after SIGTERM.", minimum=0, maximum=3600, default=30),
        "drainSeconds": integer("preStop delay so endpoints stop sending traffic before Triton stops.",
                                minimum=0, maximum=300, default=5),
    },
    default={},
)

SPEC = obj(
    "What to serve, on what, how much, and who pays.",
    {
        "source": source_schema("Where the model weights come from."),
        "engine": ENGINE,
        "resources": RESOURCES,
        "placement": PLACEMENT,
        "scaling": SCALING,
        "runtime": RUNTIME,
        "versions": array(
            "Versions with traffic weights (A/B, canary). Empty = one version named 'main' with 100%.",
            VERSION, max_items=MAX_VERSIONS,
            rules=[
                rule("self.all(v, self.exists_one(w, w.name == v.name))",
                     "versions[].name must be unique"),
                rule("size(self) == 0 || self.map(v, v.weight).sum() == 100",
                     "versions[].weight must sum to 100"),
            ],
        ),
        "billing": obj(
            "Who pays for this model's usage.",
            {"account": string("Billing account charged for usage.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                               max_length=63)},
        ),
        "aliases": array(
            "Other names callers may give as the OpenAI `model` (besides <namespace>/<name>), e.g. tiny-chat.",
            string("An alias: lowercase letters, digits, '-', '.', '_' (no '/').", pattern=ALIAS, max_length=63),
            max_items=16, list_type="set",
        ),
    },
    required=["source"],
    rules=[
        rule("!has(self.engine.tensorParallel) || !has(self.resources.gpusPerReplica) || "
             "self.resources.gpusPerReplica % (self.engine.tensorParallel * self.engine.pipelineParallel) == 0",
             "engine.tensorParallel x engine.pipelineParallel must divide resources.gpusPerReplica",
             field_path=".engine.tensorParallel"),
        rule("!has(self.engine.tensorParallel) || self.engine.tensorParallel <= self.resources.maxTensorParallel",
             "engine.tensorParallel must be <= resources.maxTensorParallel", field_path=".engine.tensorParallel"),
    ],
)

VERSION_STATUS = obj(
    "Observed state of one version.",
    {
        "name": string("Version name.", max_length=MAX_VERSION_NAME),
        "weight": integer("Traffic weight in effect.", minimum=0, maximum=100),
        "deployment": string("Deployment serving this version."),
        "service": string("Service of this version."),
        "replicas": integer("Desired replicas.", minimum=0),
        "readyReplicas": integer("Ready replicas.", minimum=0),
        "updatedReplicas": integer("Replicas running the current template.", minimum=0),
        "state": string("Pending, Progressing, Ready, ScaledToZero or Failed.",
                        enum=["Pending", "Progressing", "Ready", "ScaledToZero", "Failed"]),
    },
)

PLACEMENT_STATUS = obj(
    "The planner's choice, its estimates and the alternatives it rejected.",
    {
        "pool": string("Chosen pool.", max_length=63),
        "acceleratorId": string("Accelerator id from the knowledge base."),
        "gpusPerReplica": integer("GPUs per replica.", minimum=0),
        "tensorParallel": integer("Tensor-parallel degree.", minimum=0),
        "pipelineParallel": integer("Pipeline stages (1 unless a replica spans several nodes).",
                                    minimum=0),
        "nodesPerReplica": integer("Nodes one replica spans (more than 1 is served as a "
                                   "LeaderWorkerSet).", minimum=0),
        "precision": string("Precision the estimate assumes.", max_length=16),
        "memoryGiBPerGpu": number("Estimated memory per GPU, GiB."),
        "decodeTokensPerSecond": number("Estimated decode tokens/s per replica."),
        "prefillTokensPerSecond": number("Estimated prefill tokens/s per replica."),
        "timeToFirstTokenMs": number("Estimated time to first token, ms."),
        "costPerMillionTokens": number("Estimated cost per 1M generated tokens."),
        "currency": string("Currency of the cost.", max_length=8),
        "reason": string("Why this pool (or why none).", max_length=4096),
        "requestDigest": string("Digest of the spec fields the placement was planned for; the pool is "
                                "kept until they change.", max_length=64),
        "rejected": array("Pools the planner rejected and why.", obj("A rejected pool.", {
            "pool": string("Pool name.", max_length=63),
            "reason": string("Why it was rejected.", max_length=1024),
        }), max_items=64),
    },
)

SCALING_STATUS = obj(
    "The autoscaler's view: who owns spec.scaling.replicas, the load it saw and what it decided.",
    {
        "owner": string("Who owns the replica count: deepserve (the autoscaler writes /scale) or external "
                        "(an HPA, KEDA, the deepserve.io/autoscaler annotation or a recent manual edit).",
                        enum=["deepserve", "external"]),
        "ownerReason": string("Why that owner.", max_length=1024),
        "metric": string("Load metric the target is expressed in.", max_length=64),
        "target": number("Load per Ready replica the autoscaler aims for, in the metric's unit."),
        "desiredReplicas": integer("Replicas the autoscaler wants now (after capacity caps).", minimum=0),
        "mode": string("Decision mode: stable, burst, panic, idle, activate, hold or fixed.", max_length=32),
        "reason": string("Why this many replicas.", max_length=1024),
        "stableLoad": number("Mean load over the stable window (60 s by default)."),
        "burstLoad": number("Mean load over the burst (panic) window (6 s by default)."),
        "capacity": string("Set when the planned pool caps a scale-up (NoCapacity: ...).", max_length=2048),
        "suggestedPool": string("A pool that fits the whole demand, when moving pools is allowed.",
                                max_length=63),
        "lastScaleTime": string("When the desired replica count last changed (RFC 3339).", max_length=64),
        "lastScaleReplicas": integer("The desired replica count set at lastScaleTime.", minimum=0),
    },
)

STATUS = obj(
    "Observed state, written only by the operator.",
    {
        "observedGeneration": integer("The .metadata.generation the status reflects.", minimum=0),
        "conditions": array("Ready, Scheduled, Progressing, Degraded.", condition_schema(), max_items=16,
                            list_type="map", map_keys=["type"]),
        "placement": PLACEMENT_STATUS,
        "replicas": integer("Desired replicas after clamping (scale subresource status).", minimum=0),
        "readyReplicas": integer("Ready replicas over all versions.", minimum=0),
        "selector": string("Label selector of the pods (scale subresource).", max_length=1024),
        "endpoint": string("In-cluster URL of the model's Service (Triton HTTP).", max_length=1024),
        "endpoints": obj("All in-cluster endpoints.", {
            "http": string("Triton HTTP/REST (KServe v2) endpoint.", max_length=1024),
            "grpc": string("Triton gRPC endpoint.", max_length=1024),
            "metrics": string("Prometheus metrics endpoint.", max_length=1024),
        }),
        "versions": array("Per-version state.", VERSION_STATUS, max_items=MAX_VERSIONS),
        "scaling": SCALING_STATUS,
    },
)

ROOT_RULES = [
    rule(f"size(self.metadata.name) <= {MAX_MODEL_NAME}",
         f"metadata.name must be at most {MAX_MODEL_NAME} characters (child Services are named "
         "<model>-<version>, at most 63)"),
    rule(f"self.metadata.name.matches('{DNS_LABEL}')",
         "metadata.name must be a DNS label starting with a letter (it names Services)"),
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Ready condition."},
    {"name": "Pool", "type": "string", "jsonPath": ".status.placement.pool", "description": "Chosen pool."},
    {"name": "Accelerator", "type": "string", "jsonPath": ".status.placement.acceleratorId",
     "description": "Chosen accelerator."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas",
     "description": "Ready replicas."},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.replicas", "priority": 1,
     "description": "Desired replicas."},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "description": "HTTP endpoint."},
    {"name": "Reason", "type": "string", "priority": 1,
     "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "description": "Why (not) Ready."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
