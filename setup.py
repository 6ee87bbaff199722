"""Packages live under ``deepserve/`` (``deepserve.operator``, ``deepserve.engine``).

The repository root on ``sys.path`` exposes only ``deepserve``, so the standard library's
``operator`` can never be shadowed; tools (mypy, import-linter, ruff) read the tree as it is.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["deepserve", "deepserve.*"]))
