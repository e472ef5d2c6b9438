"""An alert's summary and description state the threshold and hold time its rule really uses: a number changed in
the definition and left stale in a text fails here, before it reaches a rendered rule or a notification."""

from __future__ import annotations

import re

import pytest

from msml.monitoring.definitions import ALERTS, runbook_values
from tests.conftest import ROOT

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


# A runbook states a threshold as a number after a comparison ("more than 5 %", "PSI above 0.2", "fewer than 1 in
# 1,000") and a hold time or window as a duration after "for" / "over the last" ("for 10 minutes"). Other numbers (a
# probe's "every 5 s", a window of 1000 rows, commands in backticks) are no alert's and are not read.
DURATION = r"\s?(minutes?|seconds?|hours?|[smh]\b)"
STATED = re.compile(
    rf"\b(?:above|below|under|than|exceeds?)\s+(\d[\d.]*)(?:\s?(%|ms)|{DURATION})?"
    rf"|\b(?:for|over the last)\s+(\d+){DURATION}"
)
UNITS = {"minute": "m", "minutes": "m", "second": "s", "seconds": "s", "hour": "h", "hours": "h"}


def _facts(a) -> set[str]:
    """What a runbook may state about alert `a`: its threshold, its `for` and the range windows its expression reads."""
    return _ways_shown(a.threshold) | {a.for_} | set(re.findall(r"\[(\d+[smh])\]", a.query))


def misstated(runbooks: str) -> list[tuple[str, str]]:
    """(alert, quantity) for each threshold or hold time a runbook section states that is not its alert's."""
    by_name = {a.name: a for a in ALERTS}
    parts = re.split(r"^#{2,3} (\S+)\n", runbooks, flags=re.M)
    wrong = []
    for name, section in zip(parts[1::2], parts[2::2], strict=True):
        if name not in by_name:
            continue
        # commands and metric names are not statements; the README's fragment markers are not text
        prose = re.sub(r"`[^`]*`|<!--.*?-->", "", section)
        for m in STATED.finditer(prose):
            number, unit = (m[1], m[2] or m[3] or "") if m[1] else (m[4], m[5])
            stated = number.rstrip(".") + UNITS.get(unit, unit)
            if stated not in _facts(by_name[name]):
                wrong.append((name, stated))
    return wrong


@pytest.fixture(scope="module")
def runbooks() -> dict[str, str]:
    """monitoring/README.md as `msml render` writes it, and the hand-in's 2.alert_runbooks.md."""
    from msml.docs import readme_files
    from msml.handin.names import RUNBOOKS
    from msml.handin.prometheus import prometheus_files

    return {"monitoring/README.md": readme_files(ROOT)["monitoring/README.md"], RUNBOOKS: prometheus_files()[RUNBOOKS]}


def test_each_runbook_states_its_alerts_threshold_and_hold_time(runbooks):
    for where, text in runbooks.items():
        assert misstated(text) == [], where


def test_a_runbook_number_that_is_not_the_alerts_fails(runbooks):
    """The check reads what the runbooks say: every threshold and hold time they state, changed, is caught."""
    for where, text in runbooks.items():
        for number in set(runbook_values().values()):
            changed = re.sub(rf"(?<![\d.]){re.escape(number)}", f"9{number}", text)
            assert changed != text and misstated(changed), (where, number)
