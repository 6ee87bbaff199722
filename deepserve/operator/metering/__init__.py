"""Usage metering, live monitoring and pay-per-use billing export.

The API the operator's kopf handlers use (all importable from this package)::

    from deepserve.operator.metering import (
        UsageLedger, start_billing_server, scrape_pod_metrics, PodSnapshot, PriceSheet)

    ledger = UsageLedger("/var/lib/deepserve/ledger.db")   # SQLite WAL, migrates itself
    ledger.set_accounts({"acme": "ACME Corp"})              # optional: refuse unknown accounts
    ledger.set_prices(PriceSheet.from_dict(cfg).with_pool_prices(gpu_node_pools), since)
    server = start_billing_server(ledger, "0.0.0.0", 8090, read_token,  # GET exports, spend
                                  write_auth=hmac_write_auth(ingest_key))  # POST, per model
    monitor = server.monitor                                # live figures, Prometheus registry

    # every resync of an engine pod (timer handler), and once more on deletion:
    snap = PodSnapshot.from_pod(pod_dict, now, account=spec_account, pool=chosen_pool)
    ledger.observe_pods([snap], deleted=[snap.uid] if terminating else [])
    sample = scrape_pod_metrics(f"http://{pod_ip}:8002/metrics")          # ScrapeError on failure
    deltas = ledger.record_scrape(snap.uid, ns, model, version, sample, now, final=terminating)
    monitor.observe_counters(ns, model, deltas)
    monitor.observe_gauges(snap.name, ns, model, sample.gauge_mean("gpu_utilization"))
    monitor.set_replicas(ns, model, ready_replicas, gpus_per_replica, pool)
    status["usage"] = monitor.summary(ns, model)            # figures for the model's status

    # exports (the CLI and GET /v1/billing/export use the same functions)
    export_to_file(ledger, "focus", start, end, "out.csv", account="acme")  # or tenant=
    tenant_spend(ledger, "acme-team", "2026-11").amount  # what the gateway's spend cap reads
    print(reconcile(ledger, start, end).to_text())

Invariants: ingestion is idempotent on the event id; a batch is stored whole or not at all;
what the ingest endpoint acknowledged is durable (``synchronous=FULL``); exports are pure
functions of the ledger and a window. See docs/metering.md.
"""

from deepserve.operator.metering.exports import FORMATS, export, export_to_file
from deepserve.operator.metering.focus import focus_metadata, write_focus_csv
from deepserve.operator.metering.gputime import GpuInterval, PodSnapshot, gpu_intervals
from deepserve.operator.metering.ledger import (
    IngestResult,
    LedgerError,
    UsageLedger,
    parse_bound,
)
from deepserve.operator.metering.monitoring import FIGURES, ModelMonitor
from deepserve.operator.metering.pricing import PriceError, PriceSheet
from deepserve.operator.metering.reconcile import ReconcileReport, reconcile
from deepserve.operator.metering.scrape import (
    CounterTracker,
    MetricsSample,
    ScrapeError,
    parse_metrics_text,
    scrape_many,
    scrape_pod_metrics,
)
from deepserve.operator.metering.server import BillingServer, start_billing_server

__all__ = [
    "FIGURES", "FORMATS", "BillingServer", "CounterTracker", "GpuInterval", "IngestResult",
    "LedgerError", "MetricsSample", "ModelMonitor", "PodSnapshot", "PriceError", "PriceSheet",
    "ReconcileReport", "ScrapeError", "UsageLedger", "export", "export_to_file",
    "focus_metadata", "gpu_intervals", "parse_bound", "parse_metrics_text", "reconcile",
    "scrape_many", "scrape_pod_metrics", "start_billing_server", "write_focus_csv",
]
