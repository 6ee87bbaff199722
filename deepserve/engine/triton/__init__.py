"""Serving the engine with NVIDIA Triton Inference Server (Python backend, decoupled mode)."""
