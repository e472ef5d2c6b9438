"""Credentials in URIs are masked in what msml prints; a plain user name stays (the printed commands must work)."""

import pytest

from msml.errors import mask


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://alice:s3cret@h:5000/x", "http://***@h:5000/x"),
        ("https://ghp_0123456789abcdefghijklmnopqrstuvwx@github.com/a/b.git", "https://***@github.com/a/b.git"),
        ("see postgresql://u:@db/optuna and http://t:p@h", "see postgresql://***@db/optuna and http://***@h"),
        ("postgresql://postgres@127.0.0.1:5433/optuna", "postgresql://postgres@127.0.0.1:5433/optuna"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_mask(text, expected):
    assert mask(text) == expected
