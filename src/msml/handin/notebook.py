"""The course notebook's parameter cell, rendered from the data contract and msml's defaults.

`notebooks/Eksperimen_<student>.ipynb` is written by hand (narrative, EDA and preprocessing cells) except its cell
tagged `parameters` (papermill's convention): the target and its labels, the missing markers and every column's
type, range and categories come from the contract, the seed, test size and invalid-row share from msml's defaults.
The notebook's checks (section 4.1 validates every value against COLUMNS and quarantines what breaks it) and its
narrative read these, so a contract change flows into the notebook by re-rendering this one cell; the counts it
prints are computed when it runs, never typed. The literals are the ones `automate_<student>.py` carries
(`msml.handin.course.course_values`), so the notebook and its script cannot disagree on the contract.

`render_files(settings, root)` returns {path relative to the root: text} for the notebook and for the automation
script its last section runs (`notebooks/automate_<student>.py`); `msml render [--check]` writes or checks them
with every other generated file (`msml.generated.every_file`).
"""

from __future__ import annotations

import json
from pathlib import Path

from msml.config import DEFAULT_SEED, DEFAULT_TEST_SIZE, Settings
from msml.errors import ExportError

PARAMETERS_TAG = "parameters"


def notebook_path(settings: Settings) -> str:
    """The notebook's path relative to the repository root."""
    return f"notebooks/Eksperimen_{settings.student}.ipynb"


def parameter_source(settings: Settings) -> str:
    """The source of the notebook's parameter cell (repository paths: `msml export` rewrites them for its layout)."""
    from msml.handin.course import course_values

    values = course_values(settings, settings.root)
    try:  # the notebook lives one folder below the root
        raw = "../" + settings.raw_path.relative_to(settings.root).as_posix()
    except ValueError:
        raise ExportError(f"the raw file {settings.raw_path} is outside the repository {settings.root}") from None
    lines = [
        f"RAW_PATH = {json.dumps(raw)}",
        f'AUTOMATE = "automate_{settings.student}.py"  # skrip otomatisasi, di folder yang sama dengan notebook ini',
        "OUTPUT_DIR = None",
        f"SEED = {DEFAULT_SEED!r}",
        f"TEST_SIZE = {DEFAULT_TEST_SIZE!r}",
        f"MAX_INVALID_SHARE = {values['max_invalid_share']}  # porsi baris rusak terbesar yang diterima",
        "",
        "# Kontrak data: target dan labelnya, penanda nilai hilang, lalu tipe, rentang dan kategori sah tiap kolom",
        f"TARGET = {values['target_literal']}",
        f"LABELS = {values['labels_literal']}  # (negatif, positif)",
        f"POSITIVE = {values['positive_literal']}",
        f"MISSING_MARKERS = {values['markers_literal']}",
        f"COLUMNS = {values['columns_literal']}",
    ]
    return "\n".join(lines)


def with_parameters(text: str, source: str, where: str = "notebook") -> str:
    """The notebook `text` (nbformat 4 JSON) with its `parameters` cell's source replaced by `source`, written as
    nbformat writes a notebook (so an unchanged notebook renders to its own bytes)."""
    try:
        notebook = json.loads(text)
        cells = [c for c in notebook["cells"] if PARAMETERS_TAG in c.get("metadata", {}).get("tags", ())]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"{where} is not a notebook: {exc!r}") from None
    if len(cells) != 1:
        raise ExportError(f"{where} needs exactly one cell tagged {PARAMETERS_TAG!r}, found {len(cells)}")
    cells[0]["source"] = source.splitlines(keepends=True)
    return json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def render_files(settings: Settings, root: Path | None = None) -> dict[str, str]:
    """{path relative to `root` (default: the settings' root): text}: the notebook with its parameter cell rendered,
    and the automation script it runs."""
    from msml.handin.course import notebook_files

    root = Path(root or settings.root)
    rel = notebook_path(settings)
    path = root / rel
    if not path.is_file():
        raise ExportError(f"the course notebook is missing: {path}")
    rendered = with_parameters(path.read_text(), parameter_source(settings), where=str(path))
    return {rel: rendered, **notebook_files(settings, root)}
