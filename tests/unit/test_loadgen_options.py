"""`msml loadgen --wrong-feedback-share`: a share in 0..1 of the feedback, refused with one line otherwise.
(What it sends is checked against a real gateway in tests/integration/test_gateway.py.)"""

from __future__ import annotations

import asyncio

import pytest

from msml.ops.loadgen import run_load
from tests.conftest import run_msml


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--feedback", "--wrong-feedback-share", "1.5"],
            "error: --wrong-feedback-share must be between 0 and 1, got 1.5",
        ),
        (
            ["--feedback", "--wrong-feedback-share", "-0.1"],
            "error: --wrong-feedback-share must be between 0 and 1, got -0.1",
        ),
        (["--wrong-feedback-share", "0.5"], "error: --wrong-feedback-share needs --feedback"),
    ],
)
def test_a_bad_wrong_feedback_share_is_one_line_and_exit_2(args, message):
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
