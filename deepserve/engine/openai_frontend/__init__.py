"""The engine pod's OpenAI frontend: Completions and Chat on the pod's Triton (port 9000)."""
