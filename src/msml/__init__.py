"""msml: a raw tabular dataset to a monitored model in production (MLflow 2.19)."""

__version__ = "0.1.0"
