"""The MSML course hand-in: the course's names and numbering, the export of its repositories and folders, the
evidence capture (MLflow, Prometheus, Grafana) and the templates of the course files."""
