"""The dataset contract and everything derived from it.

A contract file (YAML) declares the columns, their types, allowed categories or ranges, which
may be missing, and the target. From it this module derives the pandera schemas that validate
raw and processed data, the pydantic row model the gateway validates requests with, and the
lists of features the rest of the system uses. No dataset column name is written anywhere else.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import pandera.pandas as pa
import pydantic
import yaml

DEFAULT_CONTRACT = Path(__file__).parent / "contracts" / "adult.yaml"
DEFAULT_MAX_INVALID_SHARE = 0.05


from msml.errors import DataError  # noqa: E402  (re-exported: the contract's failures are data errors)


@dataclass(frozen=True)
class Column:
    name: str
    type: Literal["int", "float", "category"]
    nullable: bool = False
    values: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    @property
    def is_numeric(self) -> bool:
        return self.type != "category"


@dataclass(frozen=True)
class Contract:
    name: str
    title: str
    source: str
    licence: str
    target: str
    labels: tuple[str, str]
    positive: str
    columns: tuple[Column, ...]
    missing_markers: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()
    model_name: str = ""
    path: Path = field(default=DEFAULT_CONTRACT, compare=False)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> Contract:
        """Read a contract file (default: the Adult contract shipped with the package)."""
        path = Path(path or DEFAULT_CONTRACT)
        try:
            spec = yaml.safe_load(path.read_text())
            target = spec["target"]
            columns = tuple(
                Column(
                    name=name,
                    type=col["type"],
                    nullable=bool(col.get("nullable", False)),
                    values=tuple(str(v) for v in col.get("values", ())),
                    min=col.get("min"),
                    max=col.get("max"),
                )
                for name, col in spec["columns"].items()
            )
            contract = cls(
                name=spec["name"],
                title=spec.get("title", spec["name"]),
                source=spec.get("source", ""),
                licence=spec.get("licence", ""),
                target=target["name"],
                labels=tuple(str(v) for v in target["labels"]),
                positive=str(target["positive"]),
                columns=columns,
                missing_markers=tuple(spec.get("missing_markers", ())),
                sensitive=tuple(spec.get("sensitive", ())),
                model_name=spec.get("model_name") or f"{spec['name']}-classifier",
                path=path,
            )
        except FileNotFoundError:
            raise DataError(f"contract file not found: {path}") from None
        except (KeyError, TypeError, yaml.YAMLError) as exc:
            raise DataError(f"contract file {path} is malformed: {exc!r}") from None
        contract._check()
        return contract

    def _check(self) -> None:
        if len(self.labels) != 2 or self.positive not in self.labels:
            raise DataError(f"contract {self.path}: target needs two labels, one of them the positive label")
        for col in self.columns:
            if col.type not in ("int", "float", "category"):
                raise DataError(f"contract {self.path}: column {col.name!r} has unknown type {col.type!r}")
            if col.type == "category" and not col.values:
                raise DataError(f"contract {self.path}: category column {col.name!r} lists no values")
        unknown = set(self.sensitive) - set(self.features)
        if unknown:
            raise DataError(f"contract {self.path}: sensitive columns {sorted(unknown)} are not features")

    # ---- derived facts --------------------------------------------------------------------
    @property
    def features(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def numeric_features(self) -> list[str]:
        return [c.name for c in self.columns if c.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [c.name for c in self.columns if not c.is_numeric]

    @property
    def negative(self) -> str:
        return next(label for label in self.labels if label != self.positive)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of what the contract means (columns, types, values, ranges, target, missing markers), not of
        its file's spelling: the prediction log records it with each row, so rows served under another contract
        are told apart."""
        meaning = {
            "name": self.name,
            "target": [self.target, list(self.labels), self.positive],
            "missing_markers": list(self.missing_markers),
            "columns": [[c.name, c.type, c.nullable, list(c.values), c.min, c.max] for c in self.columns],
        }
        return hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()

    # ---- pandera schemas --------------------------------------------------------------------
    def _pandera_column(self, col: Column) -> pa.Column:
        if col.type == "category":
            checks = [pa.Check.isin(list(col.values), error="unknown category")]
            dtype = object
        else:
            checks = []
            if col.min is not None:
                checks.append(pa.Check.ge(col.min, error=f"out of range (min {col.min})"))
            if col.max is not None:
                checks.append(pa.Check.le(col.max, error=f"out of range (max {col.max})"))
            # float when nullable: numpy ints cannot hold a missing value
            dtype = "float64" if (col.type == "float" or col.nullable) else "int64"
        return pa.Column(dtype, checks=checks, nullable=col.nullable, coerce=True, required=True)

    @cached_property
    def raw_schema(self) -> pa.DataFrameSchema:
        """Schema of a raw file: every feature plus the target label."""
        columns = {c.name: self._pandera_column(c) for c in self.columns}
        columns[self.target] = pa.Column(
            object, checks=[pa.Check.isin(list(self.labels), error="unknown label")], nullable=False
        )
        return pa.DataFrameSchema(columns, strict=False)

    def processed_schema(self, feature_names: list[str]) -> pa.DataFrameSchema:
        """Schema of a train-ready file: finite numeric features and a 0/1 target."""
        columns = {name: pa.Column("float64", nullable=False, coerce=True) for name in feature_names}
        columns[self.target] = pa.Column("int64", checks=pa.Check.isin([0, 1]), coerce=True)
        return pa.DataFrameSchema(columns, strict=True, ordered=True)

    # ---- request validation (gateway) ----------------------------------------------------
    @cached_property
    def row_model(self) -> type[pydantic.BaseModel]:
        """A pydantic model of one feature row, for fast per-request validation and OpenAPI."""
        fields: dict[str, Any] = {}
        for col in self.columns:
            if col.type == "category":
                annotation: Any = Literal[tuple(col.values)]  # type: ignore[valid-type]
            else:
                base = int if col.type == "int" else float
                annotation = (
                    pydantic.conint(ge=col.min, le=col.max, strict=False)
                    if base is int
                    else (pydantic.confloat(ge=col.min, le=col.max, allow_inf_nan=False))
                )
                annotation = Annotated[annotation, pydantic.BeforeValidator(_not_a_boolean)]
            if col.nullable:
                annotation = annotation | None
                fields[col.name] = (annotation, None)
            else:
                fields[col.name] = (annotation, ...)
        config = pydantic.ConfigDict(extra="forbid", str_strip_whitespace=True)
        return pydantic.create_model(f"{self.name.title()}Row", __config__=config, **fields)

    def normalise_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Map the contract's missing markers to None (as the raw loader maps them to NaN).

        One rule with `read_csv` (no train/serve skew): a text value is stripped at both ends, then an empty
        one or a marker is missing. (The row model's str_strip_whitespace does not reach Literal fields.)
        """
        missing = ("", *self.missing_markers)
        return {k: ((None if (t := v.strip()) in missing else t) if isinstance(v, str) else v) for k, v in row.items()}

    # ---- reading and validating raw files -----------------------------------------------
    def read_csv(self, path: str | Path) -> pd.DataFrame:
        """Read a raw CSV as strings, stripped, with missing markers as NaN."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"raw file not found: {path}")
        if path.stat().st_size == 0:
            raise DataError(f"raw file is empty: {path}")
        head = path.read_bytes()[:4096]
        if b"\x00" in head:
            raise DataError(f"raw file is not a CSV (binary content): {path}")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"raw file is not a CSV (not UTF-8 text): {path}") from None
        try:
            csv.Sniffer().sniff(head.decode("utf-8", errors="ignore").split("\n", 1)[0], delimiters=",")
        except csv.Error:
            raise DataError(f"raw file is not a CSV (no comma-separated header): {path}") from None
        try:
            df = pd.read_csv(
                path,
                dtype=str,
                skipinitialspace=True,
                na_values=list(self.missing_markers),
                keep_default_na=False,
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"raw file is not a valid CSV: {path}: {exc}") from None
        df.columns = [str(c).strip() for c in df.columns]
        missing = [c for c in [*self.features, self.target] if c not in df.columns]
        if missing:
            raise DataError(f"raw file {path} is missing required column(s): {', '.join(missing)}")
        if df.empty:
            raise DataError(f"raw file has a header but no data rows: {path}")
        # the serving rule: both ends stripped (skipinitialspace only strips the left), then an empty cell or a
        # marker is missing (an empty cell reads as "" because keep_default_na is off)
        df = df.apply(lambda s: s.str.strip() if s.dtype == object else s)
        return df.where(~df.isin(["", *self.missing_markers]))

    def validate(self, df: pd.DataFrame, max_invalid_share: float = DEFAULT_MAX_INVALID_SHARE) -> ValidationResult:
        """Split rows into valid (typed) and quarantined (with the reason per row)."""
        reasons: dict[Any, list[str]] = {}
        remaining = df
        # A column that fails to coerce hides its value checks, so validate again after dropping.
        for _ in range(len(self.columns) + 1):
            try:
                valid = self.raw_schema.validate(remaining, lazy=True)
                break
            except pa.errors.SchemaErrors as exc:
                found = _reasons_by_row(exc.failure_cases, remaining)
                if not found:
                    raise DataError(f"data does not match contract {self.name!r}: {exc}") from None
                reasons.update(found)
                remaining = remaining.drop(index=list(found))
        bad_index = [i for i in df.index if i in reasons]
        quarantine = df.loc[bad_index].copy()
        quarantine["reason"] = ["; ".join(reasons[i]) for i in bad_index]
        share = len(bad_index) / len(df)
        if share > max_invalid_share:
            raise DataError(
                f"{len(bad_index)} of {len(df)} rows ({share:.1%}) are invalid, above the allowed "
                f"{max_invalid_share:.1%}; first reasons: {quarantine['reason'].head(3).tolist()}"
            )
        return ValidationResult(valid=valid[[*self.features, self.target]], quarantine=quarantine)


def _not_a_boolean(value: Any) -> Any:
    # pydantic's lax mode reads JSON true as 1; a boolean in a numeric field is a client's type mistake
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


@dataclass
class ValidationResult:
    valid: pd.DataFrame
    quarantine: pd.DataFrame


def _reasons_by_row(failures: pd.DataFrame, df: pd.DataFrame) -> dict[Any, list[str]]:
    """Turn pandera's failure cases into a readable reason per row index."""
    reasons: dict[Any, list[str]] = {}
    for case in failures.itertuples(index=False):
        if case.index is None or pd.isna(case.index):
            continue  # schema-level failures (missing columns) are raised before we get here
        check = str(case.check)
        if check.startswith("dtype("):
            continue  # repeats the coercion failure below
        if check == "not_nullable" or (check.startswith("coerce_dtype") and pd.isna(case.failure_case)):
            what = "missing value"
        elif check.startswith("coerce_dtype"):
            what = f"wrong type (expected {check.split('(')[1].rstrip(')')})"
        else:
            what = check
        reason = f"{case.column}: {what} ({case.failure_case!r})"
        row = reasons.setdefault(case.index, [])
        if reason not in row:
            row.append(reason)
    return reasons
