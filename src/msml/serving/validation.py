"""Rows checked against the data contract: typed rows out, or a 422 naming row, field and reason.

The contract's pydantic row model does the checking (one definition for validation, OpenAPI and the
training-time schema). On failure the work is bounded: the total comes from pydantic's error count,
but only the first `MAX_DETAILS` errors are turned into details, found by re-checking rows one at a
time until that many are collected — 1,000 empty rows give 14,000 errors and a 2 KB answer, not 860 KB.
"""

from __future__ import annotations

from typing import Any

import pydantic

from msml.data.contract import Contract
from msml.serving.errors import MAX_DETAILS, ROW, ClientError, short
from msml.serving.formats import BadRow

# pydantic error types → the fixed set of reasons (bounded metric label values)
REASONS = {
    "missing": "missing",
    "literal_error": "unknown_category",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "finite_number": "out_of_range",
    "extra_forbidden": "unexpected_field",
}


class RowValidator:
    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.features = contract.features
        self._feature_set = set(contract.features)
        self._rows = pydantic.TypeAdapter(list[contract.row_model])
        self._row = contract.row_model

    def validate(self, rows: list[Any]) -> list[dict[str, Any]]:
        """Check every row against the contract; returns them typed, in the contract's column order."""
        normalise = self.contract.normalise_row
        prepared = [normalise(r) if isinstance(r, dict) else r for r in rows]
        try:
            models = self._rows.validate_python(prepared)
        except pydantic.ValidationError as exc:
            raise self._errors(exc.error_count(), prepared) from None
        return [m.model_dump() for m in models]

    def _errors(self, total: int, rows: list[Any]) -> ClientError:
        details: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            if len(details) >= MAX_DETAILS:
                break
            if isinstance(row, BadRow):
                got = type(row.value).__name__ + (f" of {len(row.value)}" if isinstance(row.value, list) else "")
                details.append(
                    {
                        "row": i,
                        "field": ROW,
                        "reason": "wrong_type",
                        "message": f"expected a list of {row.width} values, got {got}",
                    }
                )
                continue
            try:
                self._row.model_validate(row)
            except pydantic.ValidationError as exc:
                details += [self._detail(i, row, err) for err in exc.errors(include_url=False, include_input=True)]
        first = details[0]
        where = (
            f"row {first['row']}, field {first.get('name', first['field'])!r}"
            if first["field"] != ROW
            else f"row {first['row']}"
        )
        msg = f"{total} validation error(s); first: {where}: {first['reason']} ({first['message']})"
        return ClientError(422, msg, details, total=total)

    def _detail(self, i: int, row: Any, err: dict[str, Any]) -> dict[str, Any]:
        loc = err["loc"]
        name = str(loc[0]) if loc else None
        if name is None or not isinstance(row, dict):
            return {
                "row": i,
                "field": ROW,
                "reason": "wrong_type",
                "message": f"a row must be an object of feature values (got {type(row).__name__})",
            }
        reason = REASONS.get(err["type"], "wrong_type")
        if name in row and row[name] is None:
            reason = "missing"  # null (or a missing marker) for a required feature
        detail = {
            "row": i,
            "field": name if name in self._feature_set else ROW,
            "reason": reason,
            "message": short(err["msg"], 200),
        }
        if reason == "unexpected_field":
            detail["message"] = f"unexpected field {short(name)!r} (not in the contract)"
        elif "input" in err and reason != "missing":
            detail["input"] = short(err["input"])
        if name not in self._feature_set and reason != "unexpected_field":
            detail["name"] = short(name)
        return detail
