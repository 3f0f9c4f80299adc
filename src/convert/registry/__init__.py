"""The model registry: the only place that talks to MLflow (runs, pyfunc models, registration, aliases, promotion)."""
