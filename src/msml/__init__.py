"""msml: a raw tabular dataset to a monitored model in production (MLflow 2.19)."""

import os

# OpenMP threads (scikit-learn's HistGradientBoosting) spin-wait by default; on a busy 2-core machine
# that made one fit 127 s instead of 11 s (measured). Sleeping waiters keep the parallelism without
# the waste. Set before scikit-learn loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
