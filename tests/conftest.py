"""Shared fixtures: the real contract, the real raw file and its committed preprocessing report, rows built from the
contract (tests/rows.py), one preprocessing run and one registered champion per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msml.data.contract import Contract
from msml.data.preprocessing import preprocess

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "adult_raw" / "adult.csv"
BIN = Path(sys.executable).parent


def run_msml(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real `msml` command; returns the CompletedProcess (never raises on exit code)."""
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(
        [str(BIN / "msml"), *args], cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def contract() -> Contract:
    return Contract.load()


@pytest.fixture(scope="session")
def raw_path() -> Path:
    return RAW


@pytest.fixture(scope="session")
def committed_report(contract) -> dict:
    """report.json of the committed processed data (`msml preprocess`): the counts that follow from the data."""
    from msml.data.preprocessing import REPORT_FILE

    return json.loads((ROOT / "data" / f"{contract.name}_preprocessing" / REPORT_FILE).read_text())


@pytest.fixture
def valid_rows(contract):
    """200 rows that satisfy every rule of the contract, as the raw loader returns them (tests/rows.py)."""
    from tests.rows import valid_rows

    return valid_rows(contract)


@pytest.fixture(scope="session")
def processed(tmp_path_factory, contract) -> Path:
    """The real raw file preprocessed once into a temp dir (seed 42)."""
    out = tmp_path_factory.mktemp("processed") / f"{contract.name}_preprocessing"
    preprocess(RAW, out, contract, seed=42)
    return out


@pytest.fixture(scope="session")
def registered_model(processed, contract, tmp_path_factory):
    """The baseline trained and registered as @champion once per session, in its own temp SQLite store
    (tests.integration.serving_fixtures.train_and_register: the real training and registry gate). The serving,
    image, monitoring, export and model-behaviour tests read it; none registers into its store."""
    from tests.integration.serving_fixtures import train_and_register

    return train_and_register(processed, contract, tmp_path_factory.mktemp("registry"), contract.model_name)


# --- the hand-in run (tests/e2e/test_handin.py) in the background -------------------------------------------------


def pytest_collection_modifyitems(config, items):
    """The tests marked `timing` go after the others (`quiet_for_timing` waits for the background work first), and
    the tests of the hand-in run last: their run started with the session (`handin_run`), beside the rest. The sort
    is stable: within each group the tests keep their order."""
    from tests.e2e.handin_run import wanted

    items.sort(key=lambda item: 2 if wanted([item]) else 1 if item.get_closest_marker("timing") else 0)


@pytest.fixture(autouse=True)
def quiet_for_timing(request):
    """A test that asserts time bounds starts once the suite's own background work has ended (the lane's jobs, the
    hand-in run): its bounds are measured without a training run of ours beside it. Usually no wait: they run last."""
    if request.node.get_closest_marker("timing"):
        for key in (LANE, HANDIN_RUN):
            work = request.config.stash.get(key, None)
            if work is not None:
                work.wait()


@pytest.fixture(scope="session", autouse=True)
def handin_run(request, tmp_path_factory):
    """`msml export` + `msml handin --profile quick` (tests/e2e/handin_run.py), started at the session's first test
    when a selected test reads it; None otherwise. Interrupted at the session's end if it still runs."""
    from tests.e2e.handin_run import HandinRun, can_run, wanted

    if not (wanted(request.session.items) and can_run()):
        yield None
        return
    run = HandinRun(tmp_path_factory.mktemp("handin")).start()
    request.config.stash[HANDIN_RUN] = run
    try:
        yield run
    finally:
        run.stop()


HANDIN_RUN = pytest.StashKey()
LANE = pytest.StashKey()


@pytest.fixture(scope="session", autouse=True)
def background_lane(request, tmp_path_factory):
    """The registered setups (tests/background.py) the selected tests take, started one after the other beside the
    tests at the session's first test; None when there are none. What no fixture took is stopped at the end."""
    from tests import background

    jobs = background.wanted(request.session.items)
    if not jobs:
        yield None
        return
    fixtures = {name: request.getfixturevalue(name) for j in jobs for name in j.needs}
    dirs = {j.name: tmp_path_factory.mktemp(f"background-{j.name}") for j in jobs}
    lane = background.Lane(jobs, dirs, fixtures).start()
    request.config.stash[LANE] = lane
    try:
        yield lane
    finally:
        lane.stop()


def pytest_terminal_summary(terminalreporter, config):
    """The background work's own times (the durations list shows only what the tests still waited for it)."""
    run = config.stash.get(HANDIN_RUN, None)
    if run is not None and run.ended:
        terminalreporter.write_line(
            f"hand-in run (export + handin --profile quick, in the background): {run.ended - run.started:.0f} s"
        )
    lane = config.stash.get(LANE, None)
    if lane is not None:
        done = [f"{j.name} {j.seconds:.0f} s" for j in lane.jobs if j.done.is_set()]
        terminalreporter.write_line("background lane (tests/background.py): " + ", ".join(done))
