"""The tuned champion `make demo` registers, served as users get it, beside MLServer on the same model files.

    .venv/bin/python benchmarks/bench_champion.py [--quick] [--workdir DIR] [--prepare] [--no-mlserver]

1. Prepared (untimed; `--prepare` stops there and a later run with the same --workdir reuses it): the raw file
   preprocessed, the baseline trained and registered, then tuned as the demo tunes (its trials and time budget)
   and gate-promoted: @champion is the tuned model, version 1 the baseline.
2. The model's own cost per call, 1 / 16 / 128 / 1,024 rows on one thread (CPU ms, median of rounds): the sklearn
   pipeline (what was served before, still the model's sklearn flavor), the compiled model the python_function
   flavor runs (its trees walked by fastwalk.c), the same with LightGBM's predictor walking them (the fallback),
   and `pyfunc.predict` (MLflow's schema enforcement included, as the scoring server calls it).
3. Servers on free loopback ports: `mlflow models serve` (1 worker) for the champion and for the baseline, an
   `msml gateway` in front of each, and MLServer 1.7.1 with adaptive batching (max_batch_size 64, max_batch_time
   5 ms, V2 endpoint, parallel_workers 0: 1.7.1 with uvloop 0.23 crashes with workers) on the champion's model
   folder, in a virtualenv this benchmark creates (skipped, with the reason, when it cannot be installed).
4. Closed loop at c = 1, 32, 64, 256 (1-row requests of test-split rows; the targets take turns, as in
   bench_gateway) and at c = 1 with each target alone ("1a"), then the open loop on the champion's gateway:
   capacity, overload (2× capacity), frozen model server. One table, and the goals of issue 27 checked:
     0 model_down at every closed-loop concurrency; c=1 gateway p50 ≤ 6 ms; at c=32 and 64 the gateway ≥ 2×
     MLServer's throughput with p99 ≤ ¼ of MLServer's; the champion's 1-row call ≤ 2 ms and 128-row ≤ 5 ms.
Measured on the shared 2-core machine (load average 14-17): the whole run 11 min once prepared (--quick ~5),
plus ~5 min the first time for MLServer's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_gateway as bg  # noqa: E402  (the client, the open-loop runs and the capacity search)

MLSERVER = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1")
MLSERVER_MODEL = "champion"
COST_ROWS = (1, 16, 128, 1024)
CONCURRENCY = (1, 32, 64, 256)
DEADLINE = 2.0  # the gateways' --model-timeout, as bench_gateway runs them


# ---- 1. the models ---------------------------------------------------------------------------------------------


def prepare(work: Path, contract, trials: int, time_budget: float):
    """(tracking URI, baseline registry URI, champion registry URI): trained once in `work`, reused after."""
    from msml.config import load_settings
    from msml.tracking.registry import champion_uri, register_and_promote
    from msml.training.tuning import tune

    baseline = bg.prepare_model(work, contract, keep=True)  # preprocessed, trained and registered as version 1
    kept = work / "champion.json"
    if not kept.exists():
        import mlflow

        print(f"tuning the champion as the demo does ({trials} trials, budget {time_budget:.0f} s)", flush=True)
        settings = load_settings(contract_path=contract.path).with_overrides(
            processed_dir=work / f"{contract.name}_preprocessing",
            tracking_uri=baseline.tracking_uri,
            artifact_root=baseline.artifact_root,
            experiment="serving-tests",
            model_name=baseline.name,
        )
        try:
            summary = tune(settings, n_trials=trials, time_budget=time_budget, progress=lambda _: None)
            promotion = register_and_promote(summary.model_uri, baseline.name, summary.run_id)
        finally:
            mlflow.set_tracking_uri(None)
        if not promotion.promoted:
            raise RuntimeError(f"the tuned model was not promoted: {promotion.reason}")
        kept.write_text(json.dumps({"version": promotion.version, "run_id": summary.run_id}))
    return baseline.tracking_uri, f"models:/{baseline.name}/{baseline.version}", champion_uri(baseline.name)


def local_model_dir(uri: str, tracking_uri: str, dst: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))
    finally:
        mlflow.set_tracking_uri(None)


# ---- 2. the model's cost per call ------------------------------------------------------------------------------


def model_cost(model_dir: Path, rows, rounds: int = 5) -> dict[str, dict[int, float]]:
    """CPU ms per call (median of `rounds`, each ≥ 0.2 s of calls) on one thread, per batch size, of the sklearn
    pipeline, the compiled model and pyfunc.predict. CPU time: a busy shared machine slows the run less."""
    import mlflow
    from threadpoolctl import threadpool_limits

    pipeline = mlflow.sklearn.load_model(str(model_dir))
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    impl = pyfunc._model_impl  # the loader module's object: the compiled model, or MLflow's sklearn wrapper
    compiled = impl if type(impl).__name__ == "FastModel" else None
    calls = {"sklearn pipeline": pipeline.predict_proba, "pyfunc.predict": pyfunc.predict}
    if compiled is not None:
        calls["compiled model"] = compiled.predict  # its trees walked by fastwalk.c when it loaded
        # the same model with LightGBM's predictor walking the trees (the runtime's fallback, and before fastwalk)
        calls["compiled, LightGBM walks"] = type(compiled)(model_dir / "fast", walker=False).predict
    table: dict[str, dict[int, float]] = {name: {} for name in calls}
    with threadpool_limits(1):
        for n in COST_ROWS:
            batch = rows.sample(n, random_state=n, replace=n > len(rows))
            for name, call in calls.items():
                call(batch)  # warm-up
                times = []
                for _ in range(rounds):
                    k, start = 0, time.process_time()
                    while (elapsed := time.process_time() - start) < 0.2 or k < 3:
                        call(batch)
                        k += 1
                    times.append(elapsed / k * 1000)
                table[name][n] = statistics.median(times)
    return table


# ---- 3. MLServer beside it -------------------------------------------------------------------------------------


def mlserver_venv(work: Path, model_dir: Path) -> tuple[Path | None, str]:
    """MLServer 1.7.1 (+ its MLflow runtime and the model's own requirements) in a virtualenv of its own under
    `work` (kept for later runs); (its bin folder, "") or (None, the one-line reason it could not be made)."""
    venv = work / "mlserver-venv"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing {' '.join(MLSERVER)} into {venv} (first time: a few minutes)", flush=True)
        python = Path(sys.base_prefix) / "bin" / "python3"
        requirements = [
            line.strip()
            for line in (model_dir / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for step in (
            [str(python), "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *MLSERVER, *requirements],
        ):
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or done.stderr.splitlines()
                return None, f"MLServer could not be installed: {(errors or ['no output'])[-1][:200]}"
        stamp.touch()
    return venv / "bin", ""


def start_mlserver(bin_dir: Path, model_dir: Path, work: Path):
    """MLServer with adaptive batching on `model_dir`, bound to loopback; (Popen, infer URL)."""
    from msml.ops.processes import spawn, stop_process, wait_ready
    from tests.integration.serving_fixtures import free_port

    folder = work / "mlserver"
    (folder / MLSERVER_MODEL).mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,  # 1.7.1 with uvloop 0.23 crashes with workers
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": MLSERVER_MODEL,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir)},
        "max_batch_size": 64,
        "max_batch_time": 0.005,
    }
    (folder / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps(model))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    proc = spawn([str(bin_dir / "mlserver"), "start", str(folder)], work / "mlserver.log", env=env, cwd=folder)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/v2/models/{MLSERVER_MODEL}/ready", 180, alive=lambda: proc.poll() is None,
                   log=work / "mlserver.log")  # fmt: skip
    except BaseException:
        stop_process(proc)
        raise
    return proc, f"{base}/v2/models/{MLSERVER_MODEL}/infer"


def v2_body(row: dict, contract) -> dict:
    """One row as an Open Inference Protocol (V2) request MLServer's MLflow runtime decodes into a DataFrame.
    A missing category is sent as "" (V2's BYTES holds no null): the model reads both as an unknown category,
    NaN, so the answer is the same."""
    inputs = []
    for column in contract.columns:
        value = row.get(column.name)
        if column.is_numeric:
            datatype = "INT64" if column.type == "int" else "FP64"
            inputs.append({"name": column.name, "shape": [1], "datatype": datatype, "data": [value]})
        else:
            inputs.append(
                {
                    "name": column.name,
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": ["" if value is None else value],
                    "parameters": {"content_type": "str"},
                }
            )
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


# ---- 4. the runs and the table ---------------------------------------------------------------------------------


def closed_loop(targets: dict[str, str], bodies: dict[str, Path], seconds: float) -> dict[tuple[str, int], dict]:
    """Each concurrency, the targets taking turns (bench_gateway's client); {(target, c): result}."""
    names = list(targets)
    results = {}
    for c in CONCURRENCY:
        measured = bg.run_client([targets[n] for n in names], c, seconds, [bodies[n] for n in names])
        for name, r in zip(names, measured, strict=True):
            results[(name, c)] = r
            print(
                f"  {name:22s} c={c:<3d} {r['throughput']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                f"p99 {r['p99']:8.2f} ms  errors {r['error_kinds'] or 0}",
                flush=True,
            )
    return results


def alone_at_1(targets: dict[str, str], bodies: dict[str, Path], seconds: float) -> dict[str, dict]:
    """Concurrency 1 with each target alone, back to back, as `hey -c 1` measures a server; {target: result}.
    Why beside the paired run: taking turns with three other servers leaves each one idle ~35 ms between its
    requests (the baseline's gateway alone takes 16 ms), and a server woken after that answers slower (measured:
    the champion's gateway p50 4.4-5.2 ms alone or paired with one server, 7.5 ms in the four-way turn)."""
    results = {}
    for name, url in targets.items():
        results[name] = r = bg.run_client([url], 1, seconds, [bodies[name]])[0]
        print(f"  {name:22s} c=1 alone {r['throughput']:8.1f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:8.2f} ms",
              flush=True)  # fmt: skip
    return results


def model_down(r: dict) -> int:
    return sum(n for kind, n in (r.get("error_kinds") or r.get("kinds") or {}).items() if "model_down" in kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (3 s cells, 10 s holds): ~5 min")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--prepare", action="store_true", help="only train and register into --workdir")
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--trials", type=int, default=None, help="tuning trials (default: the demo's)")
    args = parser.parse_args()

    from msml.config import DEFAULT_TIME_BUDGET, DEFAULT_TRIALS
    from msml.data.contract import Contract
    from msml.ops.processes import stop_process
    from msml.serving.model_server import ModelServer
    from tests.integration.serving_fixtures import free_port, start_gateway

    seconds, hold = (3.0, 10.0) if args.quick else (6.0, 30.0)
    contract = Contract.load()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-champion-"))
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri, baseline_uri, champion_uri = prepare(
        work, contract, args.trials or DEFAULT_TRIALS, DEFAULT_TIME_BUDGET
    )
    if args.prepare:
        return 0
    rows, _, bodies_file = bg.request_bodies(work, contract)
    model_dir = local_model_dir(champion_uri, tracking_uri, work / "champion-model")

    from msml.data.preprocessing import load_clean_splits

    _, test = load_clean_splits(work / f"{contract.name}_preprocessing", contract)
    print("model cost per call (one thread)", flush=True)
    cost = model_cost(model_dir, test[contract.features])

    mlserver_bin, skipped = (None, "--no-mlserver") if args.no_mlserver else mlserver_venv(work, model_dir)
    if skipped:
        print(f"MLServer left out: {skipped}", flush=True)
    v2_file = work / "bodies-v2.jsonl"
    v2_file.write_text("\n".join(json.dumps(v2_body(r, contract)) for r in rows[:2000]) + "\n")

    servers, gateways, mlserver = [], [], None
    try:
        targets: dict[str, str] = {}
        bodies: dict[str, Path] = {}
        for name, uri in (("champion", champion_uri), ("baseline", baseline_uri)):
            server = ModelServer(uri, tracking_uri, free_port(), work / f"model-server-{name}.log", workers=1)
            servers.append(server)
            print(f"starting the model server and gateway of the {name} ({uri})", flush=True)
            server.start(wait=180)
            proc, url = start_gateway(
                server.url,
                tracking_uri,
                work / f"gateway-{name}.log",
                "--model-uri",
                uri,
                "--probe-interval",
                "0.5",
                "--model-timeout",
                str(DEADLINE),
            )
            gateways.append(proc)
            targets[f"gateway · {name}"] = url
            if name == "champion":
                targets["mlflow serve · champion"] = server.url
                champion_server, champion_gateway = server, proc
        if mlserver_bin is not None:
            print("starting MLServer (adaptive batching) on the champion's model folder", flush=True)
            mlserver, targets["MLServer · champion"] = start_mlserver(mlserver_bin, model_dir, work)
        for name in targets:
            bodies[name] = v2_file if name.startswith("MLServer") else bodies_file
        bg.run_client(list(targets.values()), 4, 1.0, [bodies[n] for n in targets], warmup=2.0)  # warm every target
        closed = closed_loop(targets, bodies, seconds)
        alone = alone_at_1(targets, bodies, seconds)

        gateway_url = targets["gateway · champion"]
        groups = {"gateway": champion_gateway.pid, "model": champion_server.proc.pid}
        capacity, search = bg.find_capacity(
            lambda rate, secs: bg.open_loop(gateway_url, rate, secs, bodies_file, groups),
            closed[("gateway · champion", 32)]["throughput"],
            3.0 if args.quick else 5.0,
            hold,
        )
        print(f"overload: {2 * capacity:.0f} req/s for {hold:.0f} s", flush=True)
        overload = bg.open_loop(gateway_url, 2 * capacity, hold, bodies_file, groups)
        print(f"frozen: model server SIGSTOPped under {0.5 * capacity:.0f} req/s", flush=True)
        frozen = bg.frozen_model(champion_server, gateway_url, 0.5 * capacity, 8.0, bodies_file)
    finally:
        for proc in gateways:
            stop_process(proc)
        for server in servers:
            server.stop()
        if mlserver is not None:
            stop_process(mlserver)

    report(args, cost, closed, alone, targets, capacity, search, overload, frozen, skipped)
    return 0 if checks(cost, closed, alone, targets) else 1


def report(args, cost, closed, alone, targets, capacity, search, overload, frozen, skipped) -> None:
    load = os.getloadavg()[0]
    print()
    print(f"model cost per call: CPU ms on one thread, median of 5 rounds; load average {load:.1f}")
    names = list(cost)
    print(f"{'rows':>6s} " + " ".join(f"{n:>17s}" for n in names))
    for n in COST_ROWS:
        print(f"{n:6d} " + " ".join(f"{cost[name][n]:17.3f}" for name in names))

    print()
    left_out = f"; MLServer left out: {skipped}" if skipped else ""
    print(
        f"closed loop, 1-row requests, {3 if args.quick else 6} s per cell, targets taking turns; model servers "
        f"1 worker; {os.cpu_count()} CPUs, load average {load:.1f}{left_out}"
    )
    header = (
        f"{'target':24s} {'c':>3s} {'req/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>9s} {'model_down':>10s}  "
        "other answers than 200"
    )
    print(header)
    print("-" * len(header))
    rows = [(name, str(c), closed[(name, c)]) for c in CONCURRENCY for name in targets]
    rows[len(targets) : len(targets)] = [(name, "1a", alone[name]) for name in targets]
    for name, c, r in rows:
        other = {k: v for k, v in r["error_kinds"].items() if "model_down" not in k}
        print(
            f"{name:24s} {c:>3s} {r['throughput']:9.1f} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:9.2f} "
            f"{model_down(r):10d}  {other or 'none'}"
        )
    print("c = 1a: each target alone, back to back (alone_at_1); the other rows: the targets taking turns")

    print()
    print(
        f"open loop on the champion's gateway: capacity (≥ 99 % answered 200, p99 ≤ {bg.CAPACITY_P99_MS:.0f} ms, "
        f"held) {capacity:.0f} req/s"
    )
    bg.print_open_loop(search, [("overload", overload), ("frozen", frozen)])
    print(
        f"frozen: /health said down {frozen['detected_s']:.2f} s after SIGSTOP; first 200 "
        f"{frozen['recovered_s']:.2f} s after SIGCONT"
    )


def checks(cost, closed, alone, targets) -> bool:
    """Issue 27's goals, each printed [ok] or [MISS]; True when all are met. c=1 is judged alone (as `hey -c 1`
    measured it in the issue); the paired figure is printed beside it."""
    results = []
    gateways = [n for n in targets if n.startswith("gateway")]
    down = {(n, c): model_down(closed[(n, c)]) for n in gateways for c in CONCURRENCY}
    down.update({(n, "1a"): model_down(alone[n]) for n in gateways})
    results.append((f"model_down answers in the closed loop (gateways, c up to 256): {sum(down.values())}",
                    not any(down.values())))  # fmt: skip
    p50, paired = alone["gateway · champion"]["p50"], closed[("gateway · champion", 1)]["p50"]
    results.append((f"c=1 gateway p50 {p50:.2f} ms ≤ 6 ms (alone; {paired:.2f} ms taking turns)", p50 <= 6.0))
    if "MLServer · champion" in targets:
        for c in (32, 64):
            g, m = closed[("gateway · champion", c)], closed[("MLServer · champion", c)]
            ratio = g["throughput"] / m["throughput"]
            results.append((f"c={c} throughput gateway/MLServer {ratio:.1f}× (≥ 2×)", ratio >= 2))
            results.append((f"c={c} p99 gateway {g['p99']:.1f} ms ≤ ¼ of MLServer's {m['p99']:.1f} ms",
                            g["p99"] <= m["p99"] / 4))  # fmt: skip
    one, many = cost["pyfunc.predict"][1], cost["pyfunc.predict"][128]
    results.append((f"champion pyfunc.predict: 1 row {one:.2f} ms ≤ 2 ms, 128 rows {many:.2f} ms ≤ 5 ms",
                    one <= 2 and many <= 5))  # fmt: skip
    for text, ok in results:
        print(f"  [{'ok' if ok else 'MISS'}] {text}")
    return all(ok for _, ok in results)


if __name__ == "__main__":
    sys.exit(main())
