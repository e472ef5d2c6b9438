"""MLflow tracking: client set-up, the model registry and its champion alias, the tracking server and its
PostgreSQL backend."""
