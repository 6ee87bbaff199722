"""Unit-test session setup.

Triton's interpreter mode for CPU kernel tests is switched on in ``tests/conftest.py``
(before any test module imports Triton); nothing else is needed here.
"""
