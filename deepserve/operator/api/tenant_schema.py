"""The Tenant schema (deepserve.io/v1alpha1, cluster-scoped): who may call which models, how much.

A Tenant is a paying caller of the gateway. It is cluster-scoped because one tenant uses
models in many namespaces (its plan selects them by namespace, name or label) and its
name is its billing identity (the FOCUS ``BillingAccountId`` of its usage), which must be
unique in the whole cluster. Its API keys are Secrets (see ``deepserve.operator.tenancy``).
"""

from __future__ import annotations

from typing import Any

from deepserve.operator.api.schema_types import (
    DNS_LABEL,
    array,
    boolean,
    condition_schema,
    integer,
    obj,
    rule,
    string,
    string_map,
)

MAX_TENANT_NAME = 63
MODEL_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DECIMAL_AMOUNT = r"^[0-9]{1,12}(\.[0-9]{1,6})?$"
MAX_PER_MINUTE = 1_000_000_000

MODELS = obj(
    "Which InferenceModels the tenant may list and call. A model is allowed when it matches "
    "every non-empty axis; with every axis empty nothing is allowed (allowAll: true allows all).",
    {
        "allowAll": boolean("Every model in the cluster (excludes the other fields).", default=False),
        "namespaces": array("Namespaces whose models are allowed.",
                            string("A namespace.", pattern=DNS_LABEL, max_length=63),
                            max_items=64, list_type="set"),
        "names": array("Models allowed by name, as <namespace>/<name>.",
                       string("<namespace>/<name> of an InferenceModel.", pattern=MODEL_NAME,
                              max_length=127),
                       max_items=256, list_type="set"),
        "labels": string_map("Labels a model must carry (all of them), like a matchLabels selector."),
    },
    rules=[
        rule("!self.allowAll || (!has(self.namespaces) && !has(self.names) && !has(self.labels))",
             "plan.models.allowAll excludes namespaces, names and labels", field_path=".allowAll"),
    ],
    default={},
)

SPEND_CAP = obj(
    "Most the tenant may spend in a calendar month (UTC); requests are refused with 402 once "
    "month-to-date spend reaches it.",
    {
        "amount": string("A decimal amount, e.g. \"250\" or \"19.99\" (a string: no float rounding).",
                         pattern=DECIMAL_AMOUNT, max_length=19),
        "currency": string("ISO 4217 currency; must be the price book's currency.",
                           pattern=r"^[A-Z]{3}$", default="USD", max_length=3),
    },
    required=["amount"],
)

PLAN = obj(
    "The tenant's plan: allowed models and limits. An absent limit is unlimited.",
    {
        "models": MODELS,
        "requestsPerMinute": integer("Requests admitted per sliding minute.", minimum=1,
                                     maximum=MAX_PER_MINUTE),
        "tokensPerMinute": integer("Prompt plus generated tokens per sliding minute.", minimum=1,
                                   maximum=MAX_PER_MINUTE),
        "maxConcurrentRequests": integer("Requests in flight at once.", minimum=1, maximum=1_000_000),
        "monthlySpendCap": SPEND_CAP,
    },
    default={},
)

SPEC = obj(
    "A caller of the gateway: its plan and whether its keys are honoured.",
    {
        "plan": PLAN,
        "suspended": boolean("When true every key of the tenant is refused (401) until cleared.",
                             default=False),
        "keysAllowed": integer("Live API keys the tenant may hold at once (two allow rotation).",
                               minimum=1, maximum=2, default=2),
    },
)

STATUS = obj(
    "Observed state of the tenant.",
    {
        "observedGeneration": integer("The .metadata.generation the status reflects.", minimum=0),
        "conditions": array("Conditions in the standard shape.", condition_schema(), max_items=8,
                            list_type="map", map_keys=["type"]),
    },
)

ROOT_RULES = [
    rule(f"size(self.metadata.name) <= {MAX_TENANT_NAME}",
         f"metadata.name must be at most {MAX_TENANT_NAME} characters (it is a label value)"),
    rule(f"self.metadata.name.matches('{DNS_LABEL}')",
         "metadata.name must be a DNS label starting with a letter (it labels key Secrets and usage)"),
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Suspended", "type": "boolean", "jsonPath": ".spec.suspended", "description": "Keys refused."},
    {"name": "RPM", "type": "integer", "jsonPath": ".spec.plan.requestsPerMinute",
     "description": "Requests per minute."},
    {"name": "TPM", "type": "integer", "jsonPath": ".spec.plan.tokensPerMinute",
     "description": "Tokens per minute."},
    {"name": "Cap", "type": "string", "jsonPath": ".spec.plan.monthlySpendCap.amount",
     "description": "Monthly spend cap."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
