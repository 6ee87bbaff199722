"""Admission rules of ``spec.source`` (and ``spec.versions[].source``): one definition, two twins.

The same constants give the CRD's CEL rules (the API server refuses at admission) and the
Python check the typed views run, so both refuse the same URIs naming the same field:

- ``pvc://<claim>/<path>``: the claim a DNS label; path segments of safe characters, never
  ``.`` or ``..`` (the path is joined under the claim's mount, it must not leave it);
- ``hf://<org>/<name>[@<revision>]`` (a revision also in ``source.revision`` must be the same);
- ``s3://<bucket>/<prefix>``: a valid bucket name, a non-empty prefix of safe characters (no shell
  metacharacters, whitespace or quotes) and no ``.``/``..`` segments;
- ``builtin://<name>``: only the names the engine can create
  (:data:`deepserve.engine.contract.builtin.BUILTIN_MODELS`, torch-free);
- ``format: pytorch`` is refused (the engine reads safetensors only), ``revision`` is for
  ``hf://`` only.
"""

from __future__ import annotations

import re
from typing import Any

from deepserve.engine.contract.builtin import BUILTIN_MODELS
from deepserve.operator.api.schema_check import SpecError
from deepserve.operator.api.schema_types import Schema, rule

BUILTIN_URIS = tuple(f"builtin://{name}" for name in sorted(BUILTIN_MODELS))
# Characters of a path segment: no shell metacharacters ($ ` ; | & < > ( ) * ? ! ' " \), no spaces.
_SEGMENT = r"[-A-Za-z0-9_.=+@,]+"
PVC_FORM = rf"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/{_SEGMENT})*/?$"
HF_FORM = r"^hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[A-Za-z0-9._][-A-Za-z0-9._/]*)?$"
S3_FORM = rf"^s3://[a-z0-9][-a-z0-9.]{{1,61}}[a-z0-9](/{_SEGMENT})+/?$"  # a prefix: a whole bucket is no model
DOT_SEGMENT = r"/\.\.?(/|$)"
UNSUPPORTED_FORMATS = ("pytorch",)


def _cel(pattern: str) -> str:
    """``pattern`` as a CEL single-quoted string literal (backslashes doubled)."""
    return "'" + pattern.replace("\\", "\\\\") + "'"


URI_RULES: list[Schema] = [
    rule("self.matches('^(pvc|hf|s3|builtin)://')",
         "source.uri must start with pvc://, hf://, s3:// or builtin://", reason="FieldValueInvalid"),
    rule(f"!self.startsWith('pvc://') || self.matches({_cel(PVC_FORM)})",
         "source.uri pvc:// form is pvc://<claim-name>/<path>, the claim a DNS label, the path of "
         "letters, digits and -_.=+@, only"),
    rule(f"!self.startsWith('pvc://') || !self.matches({_cel(DOT_SEGMENT)})",
         "source.uri pvc:// path must not contain . or .. segments (it would leave the claim's mount)"),
    rule(f"!self.startsWith('hf://') || self.matches({_cel(HF_FORM)})",
         "source.uri hf:// form is hf://<org>/<name> or hf://<org>/<name>@<revision>"),
    rule(f"!self.startsWith('s3://') || self.matches({_cel(S3_FORM)})",
         "source.uri s3:// form is s3://<bucket>/<prefix>, the bucket a valid S3 bucket name, the prefix "
         "not empty, of letters, digits and -_.=+@,/ only (no shell metacharacters, spaces or quotes)"),
    rule(f"!self.startsWith('s3://') || !self.matches({_cel(DOT_SEGMENT)})",
         "source.uri s3:// prefix must not contain . or .. segments"),
    rule("!self.startsWith('builtin://') || self in [" + ", ".join(f"'{u}'" for u in BUILTIN_URIS) + "]",
         "source.uri builtin:// names the engine knows: " + ", ".join(BUILTIN_URIS)),
]

SOURCE_RULES: list[Schema] = [
    rule("!has(self.format) || !(self.format in [" + ", ".join(f"'{f}'" for f in UNSUPPORTED_FORMATS) + "])",
         "source.format pytorch is not supported: the engine loads safetensors checkpoints only",
         field_path=".format"),
    rule("!has(self.revision) || self.uri.startsWith('hf://')",
         "source.revision applies to hf:// sources only", field_path=".revision"),
    rule("!has(self.revision) || !self.uri.contains('@') || self.uri.endsWith('@' + self.revision)",
         "source.revision differs from the @<revision> in source.uri", field_path=".revision"),
]


def uri_error(uri: str) -> str | None:
    """Why ``uri`` is refused (the CEL rules' message), or None when it is admitted."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    forms = {"pvc": PVC_FORM, "hf": HF_FORM, "s3": S3_FORM}
    if scheme == "builtin":
        return None if uri in BUILTIN_URIS else f"{uri!r} is not a built-in model; known: {', '.join(BUILTIN_URIS)}"
    if scheme not in forms:
        return "must start with pvc://, hf://, s3:// or builtin://"
    if not re.match(forms[scheme], uri):
        return f"{uri!r} is not a valid {scheme}:// URI (characters outside letters, digits and -_.=+@,/)"
    if scheme in ("pvc", "s3") and re.search(DOT_SEGMENT, uri):
        return f"{uri!r}: . and .. path segments are not allowed"
    return None


def check_source(d: dict[str, Any], field: str) -> None:
    """The Python twin of the rules above for a defaulted source dict; raises SpecError."""
    problem = uri_error(d["uri"])
    if problem:
        raise SpecError(f"{field}.uri", problem)
    if d.get("format") in UNSUPPORTED_FORMATS:
        raise SpecError(f"{field}.format", f"{d['format']} is not supported: the engine loads safetensors only")
    revision, uri = d.get("revision"), d["uri"]
    if revision is not None and not uri.startswith("hf://"):
        raise SpecError(f"{field}.revision", "applies to hf:// sources only")
    if revision is not None and "@" in uri and not uri.endswith(f"@{revision}"):
        raise SpecError(f"{field}.revision", f"{revision!r} differs from the @<revision> in source.uri")
