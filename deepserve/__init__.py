"""deepserve: inference-as-a-service on Kubernetes (the operator and the engine)."""
