"""Operations around the pipeline: process supervision, the demo, the CI job, the MLflow Project, containers and
the load generator."""
