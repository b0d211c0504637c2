"""MLflow glue: stage runs, lineage between them, the model registry and its aliases."""
