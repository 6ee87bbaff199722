"""The deepserve.io/v1alpha1 API: CRD schemas (one source of truth) and typed views."""

from deepserve.operator.api.crds import API_VERSION, GROUP, VERSION, all_crds, render_crds

__all__ = ["API_VERSION", "GROUP", "VERSION", "all_crds", "render_crds"]
