"""What every train and tune pays MLflow to log its dataset and its model: inferred (MLflow's defaults) against
given (the contract's schema, the manifest's sha256, the installed pins), side by side.

    .venv/bin/python benchmarks/bench_model_logging.py [--rounds 3] [--workdir DIR]

Preprocesses the raw file into the work folder (unless it is there), fits the baseline once, then in a temporary
SQLite tracking store, alternating the two ways each round, times:
  dataset  `mlflow.data.from_pandas` + `mlflow.log_input` of the train split as MLflow infers it (schema value by
           value, a digest of the frame) against `msml.training.train.log_training_dataset` (schema from the
           contract, digest from the manifest);
  model    `mlflow.sklearn.log_model` inferring its pip requirements (a subprocess that loads the model and records
           its imports) against `msml.training.train.log_model` (the installed pins of MODEL_REQUIREMENTS).
Prints the median wall seconds of each and checks the two give the same logged schema and requirements.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import mlflow
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from msml.config import load_settings
    from msml.data.preprocessing import preprocess
    from msml.training import train as T

    warnings.filterwarnings("ignore")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-model-logging-"))
    settings = load_settings().with_overrides(
        processed_dir=work / "processed",
        tracking_uri=f"sqlite:///{work / f'mlflow-{int(time.time())}.db'}",
        artifact_root=work / "artifacts",
        experiment="bench-model-logging",
    )
    contract = settings.contract
    if not (settings.processed_dir / "manifest.json").exists():
        preprocess(settings.raw_path, settings.processed_dir, contract)
    data = T.load_data(settings)
    estimator = LogisticRegression(max_iter=2000).fit(data.splits.X_train, data.splits.y_train)
    frame = pd.concat([data.splits.X_train, data.splits.y_train], axis=1)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_experiment(settings.experiment)

    def inferred_dataset():
        dataset = mlflow.data.from_pandas(
            frame, source=str(data.train_path), targets=contract.target, name="train.csv.gz"
        )
        mlflow.log_input(dataset, context="training")
        return dataset.schema

    def given_dataset():
        T.log_training_dataset(data, contract)
        return T.train_ready_schema(list(data.splits.X_train.columns), contract)

    def inferred_model():
        pipeline = Pipeline([("transform", data.transformer), ("model", estimator)])
        info = mlflow.sklearn.log_model(
            pipeline,
            T.MODEL_ARTIFACT,
            signature=T.model_signature(contract),
            input_example=data.test_clean[contract.features].head(T.INPUT_EXAMPLE_ROWS),
            pyfunc_predict_fn="predict_proba",
        )
        return info.model_uri

    def given_model():
        return T.log_model(estimator, data, contract)

    steps = ("dataset inferred", "dataset given", "model inferred", "model given")
    times: dict[str, list[float]] = {k: [] for k in steps}
    results = {}
    for k in range(args.rounds):
        order = [("inferred", inferred_dataset, inferred_model), ("given", given_dataset, given_model)]
        for way, dataset, model in order if k % 2 == 0 else reversed(order):
            with mlflow.start_run(run_name=f"{way}-{k}"):
                start = time.perf_counter()
                results[f"schema {way}"] = dataset()
                times[f"dataset {way}"].append(time.perf_counter() - start)
                start = time.perf_counter()
                uri = model()
                times[f"model {way}"].append(time.perf_counter() - start)
                results[f"requirements {way}"] = Path(
                    mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")
                ).read_text()
    mlflow.set_tracking_uri(None)

    print()
    print(
        f"seconds (median of {args.rounds}, alternating), {len(frame):,} train rows × {frame.shape[1]} columns; "
        f"{os.cpu_count()} CPUs shared with other work, load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'step':10s} {'inferred':>9s} {'given':>9s} {'saved':>9s}"
    print(header)
    print("-" * len(header))
    for step in ("dataset", "model"):
        a, b = statistics.median(times[f"{step} inferred"]), statistics.median(times[f"{step} given"])
        print(f"{step:10s} {a:9.2f} {b:9.2f} {a - b:9.2f}")
    same_schema = results["schema inferred"] == results["schema given"]
    same_requirements = results["requirements inferred"] == results["requirements given"]
    print(f"\n[{'ok' if same_schema else 'MISSED'}] the given schema equals the inferred one")
    print(f"[{'ok' if same_requirements else 'MISSED'}] the given requirements equal the inferred ones")
    if not same_requirements:
        print(results["requirements inferred"], "---", results["requirements given"], sep="\n")
    return 0 if same_schema and same_requirements else 1


if __name__ == "__main__":
    sys.exit(main())
