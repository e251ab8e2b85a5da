"""Write notebooks/widgets.ipynb: the three explorers on tiny models (fast), for nbval and
for the real-browser test (tests/browser)."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell("# The diagnostics as widgets\n\nEach explorer wires ipywidgets controls "
                      "to plain functions in `kvdirect_interp.explore`. Tiny models keep this "
                      "notebook fast; pass `model_names=[\"smollm2-135m\"]` to explore a real one."),
    new_code_cell("# NBVAL_IGNORE_OUTPUT\nimport warnings\nwarnings.filterwarnings('ignore')\n"
                  "import kvdirect_interp as kd\nfrom kvdirect_interp.widgets import "
                  "GenerationComparer, PatchingExplorer, ReconstructionExplorer"),
    new_code_cell("# NBVAL_IGNORE_OUTPUT\npatching = PatchingExplorer(\n"
                  "    clean=\"The cat sat on the mat.\", donor=\"A dog ran in the park!!\")\npatching"),
    new_code_cell("# NBVAL_IGNORE_OUTPUT\nreconstruction = ReconstructionExplorer(text=\"Keys and "
                  "values are projections of the residual stream.\")\nreconstruction"),
    new_code_cell("# NBVAL_IGNORE_OUTPUT\nmodel = kd.load_model(\"tiny-llama\")\n"
                  "comparer = GenerationComparer(model, \"Once upon a time\", {\n"
                  "    \"FullKV\": kd.FullKV(), \"KVDirect(8)\": kd.KVDirect(8), "
                  "\"WindowOnly(8)\": kd.WindowOnly(8)}, max_new_tokens=12)\ncomparer"),
    new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(patching.figure.layout.title.text)\n"
                  "print(reconstruction.status.value)\nprint(comparer.status.value)"),
    new_code_cell("assert \"resid_pre\" in patching.figure.layout.title.text\n"
                  "assert comparer.status.value.startswith(\"token match\")"),
]
nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"}})
out = Path(__file__).resolve().parents[1] / "notebooks" / "widgets.ipynb"
nbformat.write(nb, out)
print("wrote", out)
