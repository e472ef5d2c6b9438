"""An alert's summary and description state the threshold and hold time its rule really uses: a number changed in
the definition and left stale in a text fails here, before it reaches a rendered rule or a notification."""

from __future__ import annotations

import re

from msml.monitoring.definitions import ALERTS

# Thresholds at the edge of a 0/1 gauge or of a count ("< 1": down, "> 0": any failure): the texts say it in words.
IN_WORDS = {"ModelServerDown", "GatewayDown", "RetrainFailed"}


def _ways_shown(threshold: float) -> set[str]:
    """The threshold as a plain number, a percentage (a ratio) or milliseconds (a duration in seconds)."""
    return {f"{threshold:g}", f"{threshold * 100:g}%", f"{threshold * 1000:g}ms"}


def test_each_alert_text_states_the_threshold_its_expression_compares_against():
    for a in ALERTS:
        assert a.expr.endswith(f" {a.op} {a.threshold:g}"), a.name
        if a.name in IN_WORDS:
            assert a.threshold in (0, 1), f"{a.name}: a threshold of {a.threshold:g} is a number its texts must show"
            continue
        for text in (a.summary, a.description):
            numbers = {n.replace(" ", "") for n in re.findall(r"[\d.]+(?: ?(?:%|ms))?", text)}
            assert _ways_shown(a.threshold) & numbers, f"{a.name}: {text!r}"


def test_a_hold_time_stated_in_a_text_is_the_alerts_for():
    stated = {a.name: re.findall(r"\bfor (\d+[smh])\b", a.summary + " " + a.description) for a in ALERTS}
    assert stated["ModelServerDown"] and stated["GatewayDown"]  # the texts that say how long it has lasted
    for a in ALERTS:
        assert all(duration == a.for_ for duration in stated[a.name]), (a.name, stated[a.name], a.for_)
