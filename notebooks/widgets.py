# %% [markdown]
# # The diagnostics as widgets
#
# Each explorer wires ipywidgets controls to plain functions in `kvdirect_interp.explore`. Tiny models keep this notebook fast; pass `model_names=["smollm2-135m"]` to explore a real one.

# %%
# NBVAL_IGNORE_OUTPUT
import warnings

warnings.filterwarnings("ignore")
import kvdirect_interp as kd
from kvdirect_interp.widgets import GenerationComparer, PatchingExplorer, ReconstructionExplorer

# %%
# NBVAL_IGNORE_OUTPUT
patching = PatchingExplorer(clean="The cat sat on the mat.", donor="A dog ran in the park!!")
patching

# %%
# NBVAL_IGNORE_OUTPUT
reconstruction = ReconstructionExplorer(
    text="Keys and values are projections of the residual stream."
)
reconstruction

# %%
# NBVAL_IGNORE_OUTPUT
model = kd.load_model("tiny-llama")
comparer = GenerationComparer(
    model,
    "Once upon a time",
    {"FullKV": kd.FullKV(), "KVDirect(8)": kd.KVDirect(8), "WindowOnly(8)": kd.WindowOnly(8)},
    max_new_tokens=12,
)
comparer

# %%
# NBVAL_CHECK_OUTPUT
print(patching.figure.layout.title.text)
print(reconstruction.status.value)  # same-shape rebuild: bitwise on any machine

# %%
# NBVAL_IGNORE_OUTPUT
# free-running greedy tokens of a tiny random model: a near-tie can flip on another CPU
print(comparer.status.value)

# %%
assert "resid_pre" in patching.figure.layout.title.text
assert comparer.status.value.startswith("token match")
