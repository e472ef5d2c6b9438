"""The OpenAPI description of `/invocations` and `/feedback`, derived from the contract's row model.

The handlers read their own bodies (see `gateway`), so FastAPI cannot infer these schemas; they are
written out here once, from the same row model the validation uses.
"""

from __future__ import annotations

from msml.data.contract import Contract
from msml.serving.errors import JSON_TYPE
from msml.serving.formats import FORMATS


def openapi_extra(contract: Contract, max_rows: int, max_items: int) -> tuple[dict, dict]:
    """(extra for POST /invocations, extra for POST /feedback)."""
    row = contract.row_model.model_json_schema()
    row.pop("title", None)
    rows = {"type": "array", "items": row, "minItems": 1, "maxItems": max_rows}
    split = {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "string", "enum": contract.features}},
            "data": {"type": "array", "items": {"type": "array"}, "minItems": 1},
        },
        "required": ["columns", "data"],
    }
    # one variant per request format the parser takes (formats.FORMATS): a new format appears here by itself
    variants = [
        {
            "type": "object",
            "properties": {k: split if k == "dataframe_split" else rows},
            "required": [k],
            "additionalProperties": False,
        }
        for k in FORMATS
    ]
    responses = {
        "200": {"description": "Positive-class probability, predicted label and an id (for /feedback) per row."},
        "400": {"description": "Malformed JSON or unknown request format."},
        "413": {"description": "Body or row count over the limit."},
        "415": {"description": f"Content-Type is not {JSON_TYPE}."},
        "422": {"description": "Rows that fail the data contract: row, field and reason for each."},
        "499": {"description": "(never sent) the client left before its answer; counted in the metrics."},
        "500": {"description": "An unexpected gateway error (JSON, with a request id that is in the log)."},
        "502": {"description": "The model server answered with an error or a malformed answer."},
        "503": {"description": "Overloaded (queue full) or model server down: retry after Retry-After seconds."},
        "504": {"description": "The request's deadline passed (model server too slow)."},
    }
    invocations = {
        "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": {"oneOf": variants}}}},
        "responses": responses,
    }
    label = {"anyOf": [{"type": "string", "enum": list(contract.labels)}, {"type": "integer", "enum": [0, 1]}]}
    feedback = {
        "requestBody": {
            "required": True,
            "content": {
                JSON_TYPE: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "feedback": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": max_items,
                                "items": {
                                    "type": "object",
                                    "properties": {"id": {"type": "string"}, "label": label},
                                    "required": ["id", "label"],
                                    "additionalProperties": False,
                                },
                            }
                        },
                        "required": ["feedback"],
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {k: v for k, v in responses.items() if k in ("400", "401", "413", "415", "422")}
        | {
            "401": {"description": "A feedback token is configured and was not given."},
            "503": {"description": "The loop store cannot take labels right now: retry after Retry-After seconds."},
        },
    }
    return invocations, feedback
