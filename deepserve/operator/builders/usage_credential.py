"""A model's usage write credential: the Secret its engine pods read their token from.

The token (``dsw1:<namespace>/<model>:<mac>``, deepserve.operator.metering.credentials) lets
a pod write usage of its own model only. The Secret is owned by the model (deleted with it)
and labelled ``deepserve.io/model``; engine pods mount it read-only, and the usage shipper
reads the token from the file whose *path* ``DEEPSERVE_USAGE_TOKEN_FILE`` names, re-reading
it before every batch, so a rotated token is picked up without restarting the pod.
"""

from __future__ import annotations

import base64
from typing import Any

from deepserve.operator.api.crds import API_VERSION
from deepserve.operator.builders.context import ModelRef, labels

#: Where the engine container finds its write credential (a read-only Secret volume).
USAGE_TOKEN_DIR = "/var/run/secrets/deepserve.io/usage"
USAGE_TOKEN_KEY = "token"
USAGE_TOKEN_FILE = f"{USAGE_TOKEN_DIR}/{USAGE_TOKEN_KEY}"
TOKEN_FILE_ENV = "DEEPSERVE_USAGE_TOKEN_FILE"
VOLUME = "usage-credential"
#: Which ingest key minted the token (a non-secret id, credentials.key_id).
ANNOTATION_KEY_ID = "deepserve.io/ingest-key-id"


def usage_credential_name(model: str) -> str:
    """Name of the model's write-credential Secret (a model name is a label value, at most
    63 characters, so the name stays far below a Secret's 253)."""
    return f"{model}-usage-credential"


def build_usage_credential_secret(model: ModelRef, token: str, ingest_key_id: str) -> dict[str, Any]:
    """The Secret holding ``token`` for ``model``'s engine pods, owned by the model."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": usage_credential_name(model.name),
            "namespace": model.namespace,
            "labels": labels(model.name),
            "annotations": {ANNOTATION_KEY_ID: ingest_key_id},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": "InferenceModel", "name": model.name,
                "uid": model.uid, "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "type": "Opaque",
        # data, not stringData: server-side apply owns data fields; stringData is write-only
        "data": {USAGE_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def usage_credential_volume(model: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(volume, read-only mount, env var naming the file) of the engine container."""
    volume = {"name": VOLUME, "secret": {"secretName": usage_credential_name(model),
                                         "defaultMode": 0o440,
                                         "items": [{"key": USAGE_TOKEN_KEY, "path": USAGE_TOKEN_KEY}]}}
    mount = {"name": VOLUME, "mountPath": USAGE_TOKEN_DIR, "readOnly": True}
    env = {"name": TOKEN_FILE_ENV, "value": USAGE_TOKEN_FILE}
    return volume, mount, env
