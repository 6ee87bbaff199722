"""The deepserve operator: kopf handlers, pure builders, planner, autoscaler, metering, CLI.

Only ever imported as ``deepserve.operator``; the repository root holds ``deepserve/``, so
nothing named ``operator`` can shadow the standard library.
"""
