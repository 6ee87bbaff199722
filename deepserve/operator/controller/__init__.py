"""The InferenceModel controller: pure decide/status functions and thin kopf handlers."""
