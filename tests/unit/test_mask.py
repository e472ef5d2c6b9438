"""Credentials in URIs are masked in what msml prints; a plain user name stays (the printed commands must work)."""

import pytest

from msml.errors import mask

# A token-shaped user part, built here so no credential-like literal sits in the repository.
TOKEN = "t" * 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://alice:s3cret@h:5000/x", "http://***@h:5000/x"),
        (f"https://{TOKEN}@github.com/a/b.git", "https://***@github.com/a/b.git"),
        ("see postgresql://u:@db/optuna and http://t:p@h", "see postgresql://***@db/optuna and http://***@h"),
        ("postgresql://postgres@127.0.0.1:5433/optuna", "postgresql://postgres@127.0.0.1:5433/optuna"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_mask(text, expected):
    assert mask(text) == expected
