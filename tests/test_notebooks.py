"""The notebooks in examples/ run top to bottom in a fresh kernel, as a student would run
them: any error, or any check of theirs that misses its tolerance (an assert), fails."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_the_examples_are_there():
    assert [p.name for p in NOTEBOOKS] == ["backends_and_speed.ipynb",
                                           "captioning_exercise.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_notebook_runs_from_a_clean_kernel(path, monkeypatch):
    monkeypatch.delenv("CAPTION_BACKEND", raising=False)  # the notebooks' own default
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code) and any(c.outputs for c in code), \
        f"{path.name} is committed without its outputs (run it, then save)"
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
