"""Shared fixtures. Nothing phones home; every test writes only under its own temp dirs."""

import os

for var, val in {"GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
                 # small models on a shared 2-core machine: thread hand-offs cost more than they save
                 "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
    os.environ.setdefault(var, val)
