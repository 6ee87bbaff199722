"""Structured output: OpenAI ``response_format`` (JSON object, JSON schema, regex) enforced
by a token mask per decode step.

:mod:`.spec` parses and checks what a request asks for (no torch, no xgrammar: the gateway
imports it through :mod:`deepserve.engine.openai_api`); :mod:`.grammar` compiles it with
xgrammar and masks the logits of constrained sequences.
"""
