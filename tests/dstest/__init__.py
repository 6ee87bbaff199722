"""Shared test support: the cluster handle, namespaces and object builders."""
