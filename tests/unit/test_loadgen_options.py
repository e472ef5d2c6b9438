"""`msml loadgen --wrong-feedback-share`: a share in 0..1 of the feedback, refused with one line otherwise.
(What it sends is checked against a real gateway in tests/integration/test_gateway.py.)"""

from __future__ import annotations

import asyncio
import sys

import pytest

from msml.cli import main
from msml.ops.loadgen import run_load
from tests.conftest import run_msml

BAD_SHARES = [
    (
        ["--feedback", "--wrong-feedback-share", "1.5"],
        "error: --wrong-feedback-share must be between 0 and 1, got 1.5",
    ),
    (
        ["--feedback", "--wrong-feedback-share", "-0.1"],
        "error: --wrong-feedback-share must be between 0 and 1, got -0.1",
    ),
    (["--wrong-feedback-share", "0.5"], "error: --wrong-feedback-share needs --feedback"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SHARES)
def test_a_bad_wrong_feedback_share_is_one_line_and_exit_2(args, message, monkeypatch, capsys):
    """The `msml` entry point in this process (`msml.cli.main` with its argv): what the installed command runs."""
    monkeypatch.setattr(sys, "argv", ["msml", "loadgen", "--count", "1", "--no-progress", *args])
    for name in ("stdout", "stderr"):  # main wraps both in the credential mask: put pytest's back afterwards
        monkeypatch.setattr(sys, name, getattr(sys, name))
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


@pytest.mark.slow  # a new interpreter per case (~1.3 s each); the in-process test above runs in make test-fast
@pytest.mark.parametrize(("args", "message"), BAD_SHARES)
def test_a_bad_wrong_feedback_share_is_one_line_and_exit_2_from_the_installed_command(args, message):
    result = run_msml("loadgen", "--count", "1", "--no-progress", *args, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_run_load_refuses_a_share_outside_0_1(contract):
    with pytest.raises(ValueError, match="between 0 and 1, got 2"):
        asyncio.run(
            run_load(
                "http://127.0.0.1:9", [{}], ["x"], count=1, feedback=True, wrong_feedback_share=2.0, contract=contract
            )
        )
