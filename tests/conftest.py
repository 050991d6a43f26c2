"""Shared fixtures. Nothing phones home; every test writes only under its own temp dirs."""

import os
import tempfile

for var, val in {"GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
                 # small models on a shared 2-core machine: thread hand-offs cost more than they save
                 "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
    os.environ.setdefault(var, val)

# Prefect's home (its local database, used by the temporary API of every `kd run` the tests start) per test
# process: two xdist workers never share a SQLite file, and the user's own ~/.prefect is never touched.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"kd-tests-prefect-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
