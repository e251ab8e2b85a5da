"""Every notebook is a jupytext pair: notebooks/NN_name.py (percent format, the source) and
notebooks/NN_name.ipynb (the same cells, executed, outputs stored for nbval). These tests
fail while a pair is out of sync; `.venv/bin/jupytext --sync notebooks/*.ipynb` fixes that
(then re-execute the notebook: bash scripts/execute_notebooks.sh notebooks/NAME.ipynb).
Nothing is executed here."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import pytest
from jupytext.config import load_jupytext_config

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
IPYNB = sorted(NOTEBOOKS.glob("*.ipynb"))
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
SYNC = "run `.venv/bin/jupytext --sync notebooks/*.ipynb`"


def _first_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip()]
    return repr(lines[0][:70]) if lines else "(empty)"


def test_every_notebook_has_its_source_and_vice_versa():
    assert IPYNB, f"no notebooks found in {NOTEBOOKS}"
    ipynb, py = {p.stem for p in IPYNB}, {p.stem for p in SOURCES}
    assert not ipynb - py, f"notebooks without a .py source: {sorted(ipynb - py)}; {SYNC}"
    assert not py - ipynb, f".py sources without a notebook: {sorted(py - ipynb)}; {SYNC}"


def test_pairing_config():
    config = load_jupytext_config(str(NOTEBOOKS / "00_tour.ipynb"))
    assert config is not None, "notebooks/jupytext.toml is missing"
    formats = config.formats if isinstance(config.formats, str) else ",".join(config.formats)
    assert formats == "ipynb,py:percent"
    # no header and no cell metadata in the .py files: metadata stays in the .ipynb
    assert (config.notebook_metadata_filter, config.cell_metadata_filter) == ("-all", "-all")


@pytest.mark.parametrize("ipynb", IPYNB, ids=lambda p: p.stem)
def test_pair_in_sync(ipynb: Path):
    source = ipynb.with_suffix(".py")
    if not source.exists():
        pytest.fail(f"{source.name} is missing; {SYNC}")
    config = load_jupytext_config(str(ipynb))
    text = jupytext.read(source, fmt="py:percent", config=config)
    executed = jupytext.read(ipynb)
    text_cells = [(c.cell_type, c.source) for c in text.cells]
    nb_cells = [(c.cell_type, c.source) for c in executed.cells]
    for i, (a, b) in enumerate(zip(text_cells, nb_cells, strict=False)):
        if a != b:
            what = "type" if a[0] != b[0] else "source"
            pytest.fail(
                f"{ipynb.stem}: cell {i} differs in {what}: {source.name} has "
                f"{a[0]} {_first_line(a[1])}, {ipynb.name} has {b[0]} "
                f"{_first_line(b[1])}; {SYNC}, then re-execute the notebook"
            )
    assert len(text_cells) == len(nb_cells), (
        f"{ipynb.stem}: {source.name} has {len(text_cells)} cells, {ipynb.name} "
        f"{len(nb_cells)} (the first {min(len(text_cells), len(nb_cells))} agree); {SYNC}, "
        "then re-execute the notebook"
    )


@pytest.mark.parametrize("ipynb", IPYNB, ids=lambda p: p.stem)
def test_no_widget_state_stored(ipynb: Path):
    metadata = json.loads(ipynb.read_text(encoding="utf-8"))["metadata"]
    assert "widgets" not in metadata, (
        f"{ipynb.name} stores widget state (metadata.widgets, plotly's JS bundle): execute "
        "with bash scripts/execute_notebooks.sh (store_widget_state=False)"
    )
