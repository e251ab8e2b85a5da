"""Patching sweeps without one whole forward pass per cell (`patch_sweep`'s engine).

A sweep patches the donor's residual into the clean run at every cell (layer, position),
or (layer, every position). Three facts make most of a patched forward pass redundant:

- every layer below the patched one computes what the clean run computed, at the same
  shapes, so with the same bits: the pass can start at the patched layer from the clean
  run's captured residual. Here the plain HF tree (`fast_path(model).plain`, the bridge's
  own tensors, probed bitwise equal to the bridge) runs HF's own model forward (its mask
  helpers, rotary module, final norm and head) with the layers below the start replaced
  by a pass-through and the start layer's input given as `inputs_embeds`;
- a patch at position p cannot change positions before p (causal attention): their
  logits are the clean run's, bit for bit, and they need not be recomputed;
- several patched variants can share one batched forward pass.

Bitwise equality is a property of GEMM shapes. Measured with MKL on this CPU (fp32): a
GEMM row's bits depend on the GEMM's row count M, in classes (for SmolLM2, M in 2..15 give
the same rows for the MLP and head shapes, 16 and more others; M in 1..3 differ from 15
for the attention projections), but not on where the row sits among the M rows or on what
the other rows hold. Batching variants (M = variants x 15) therefore changes the bits of
a 15-token prompt; a tail of T rows keeps them where T is in M=pos's class. Hence:

- `exact=True`: each cell is one layered pass at the full forward pass's shapes ([batch,
  pos] rows in every GEMM); where the metric reads the last position only (the built-in
  metrics with per_position=True) the head runs on the last rows of `pos` cells packed
  into one [batch, pos] GEMM (same M, same bits), and a cell patched at p > 0 runs as a
  tail pass (positions p.. over the clean run's K/V before p, from HF's cache) once the
  sweep has seen, at the first cell of that position, the tail pass give the full-shape
  pass's final hidden states bit for bit on layers of the same kinds (SmolLM2, 15 tokens:
  p <= 11, T >= 4). Bitwise equal to one patched forward pass per cell; probed per model
  and site against `patch_residual`; where the layered pass is not available or not equal
  (the fast path off: GPT-2's bridge, a hook attached, a cfg flag) every cell is a full
  patched forward pass, and the result says so;
- `exact=False` (fast): the single-position cells at one position p share one pass over
  positions p.. (the clean K/V before p from HF's cache) that starts at the lowest cell's
  start layer; each other cell joins the batch at its own start layer (no row computed
  twice, and the GEMMs grow with the batch), with the head on the last position only
  where the metric reads nothing else. Other GEMM shapes, so other bits: the largest
  difference from the exact result, measured on `check` cells recomputed exactly, is
  reported. Whole-residual cells are layered passes as in the exact mode.

Passes are split so that none holds more than about `FAST_BYTES` of activations and K/V.

Modules, in data-flow order: `tree` (the plain tree run from a layer), `inputs` (what a
sweep captures once), `probe` (is the layered pass bitwise `patch_residual`, per model and
site), `tail` (a pass over positions p.. on the clean K/V before p), `exact` and `fast`
(the two modes), `engine` (patch_sweep's rows and what ran), `patching` (`patch_sweep`
itself: the public entry), `summary` (means over prompt pairs with bootstrap intervals).
"""

from .engine import Sweep, check_cells, run
from .patching import patch_sweep
from .probe import layered
from .summary import sweep_summary

__all__ = ["Sweep", "check_cells", "layered", "patch_sweep", "run", "sweep_summary"]
