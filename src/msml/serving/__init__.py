"""Serving: the MLflow model-server process and the validating, micro-batching gateway."""
