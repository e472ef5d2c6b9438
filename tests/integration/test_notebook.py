"""The course's experiment notebook runs headless, follows the template, does its preprocessing in its own pandas /
scikit-learn cells, and its last section shows automate_<student>.py's outputs equal its own (and
`msml preprocess`'s)."""

from __future__ import annotations

import re
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT
from tests.helpers import dataset_digests

NOTEBOOK = ROOT / "notebooks" / "Eksperimen_YudhaElfransyah.ipynb"
AUTOMATE = ROOT / "notebooks" / "automate_YudhaElfransyah.py"  # generated (tests/unit/test_course_files.py)
# The course template's five sections, in this order, with these exact titles.
TEMPLATE_HEADINGS = [
    "1. Perkenalan Dataset",
    "2. Import Library",
    "3. Memuat Dataset",
    "4. Exploratory Data Analysis (EDA)",
    "5. Data Preprocessing",
]
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)


def headings(nb) -> list[str]:
    return [h for cell in nb.cells if cell.cell_type == "markdown" for h in HEADING.findall(cell.source)]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a temp copy; returns (executed notebook, its output dir)."""
    work = tmp_path_factory.mktemp("notebook")
    # the notebook reads ../data/adult_raw/adult.csv: give the copy the same relative layout
    (work / "notebooks").mkdir()
    (work / "data").symlink_to(ROOT / "data", target_is_directory=True)
    copy = work / "notebooks" / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    shutil.copy(AUTOMATE, work / "notebooks" / AUTOMATE.name)
    out = work / "out"
    nb = nbformat.read(copy, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSML_NOTEBOOK_OUT", str(out))
        mp.setenv("MPLBACKEND", "Agg")  # headless; the notebook still renders inline
        # the `python` in the kernelspec resolves to this interpreter (the venv): pandas, scikit-learn, matplotlib
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(copy.parent)}}
        ).execute()  # raises CellExecutionError on the first failing cell
    nbformat.write(nb, copy)
    return nb, out


def test_committed_notebook_follows_the_template():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    found = [h for h in headings(nb) if h in TEMPLATE_HEADINGS]
    assert found == TEMPLATE_HEADINGS, f"template headings missing or out of order: {found}"
    assert nb.metadata.kernelspec.name == "python3"


def test_committed_notebook_has_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "commit the notebook executed (outputs included)"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) >= 5, "EDA plots missing"


@pytest.mark.slow
def test_notebook_executes_without_error(executed):
    nb, _ = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert [h for h in headings(nb) if h in TEMPLATE_HEADINGS] == TEMPLATE_HEADINGS
    # with MPLBACKEND=Agg set, the plots are still rendered inline
    assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) >= 5


@pytest.mark.slow
def test_notebook_outputs_equal_the_automation_and_msml_preprocess(executed, processed):
    nb, out = executed
    assert out.is_dir(), "the notebook's automation section did not write to MSML_NOTEBOOK_OUT"
    assert dataset_digests(out) == dataset_digests(processed)  # automate_<student>.py == msml preprocess, byte for byte
    # the notebook compared its own step-by-step frames with the automation's files (assert_frame_equal, exact)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    printed = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    assert printed.startswith("IDENTIK:"), printed
