"""Whether a model's layered passes give `patch_residual`'s bits, probed once per site."""

from __future__ import annotations

import weakref

import torch

from ..fastpath import fast_path
from ..hooks import capture_residuals, forward, patch_residual
from .exact import exact_logits
from .inputs import capture_inputs
from .tree import Layered

_LAYERED: weakref.WeakKeyDictionary[torch.nn.Module, Layered | str] = weakref.WeakKeyDictionary()


def layered(model, site: str) -> tuple[Layered | None, str]:
    """(the model's Layered runner, "") where a layered pass at `site` is available and
    probed bitwise equal to `patch_residual`, else (None, why not)."""
    choice, _ = fast_path(model).choose((), "auto")
    if choice.path != "fast":
        return None, f"the fast path is off ({choice.reason})"
    plain = fast_path(model).plain
    found = _LAYERED.get(plain)
    if found is None:
        try:
            found = Layered(model, plain)
        except (LookupError, AttributeError) as err:
            found = f"the plain tree cannot be run from a layer ({err})"
        _LAYERED[plain] = found
    if isinstance(found, str):
        return None, found
    if site == "resid_mid" and not found.mid_in:
        return None, "no plain-tree counterpart of hook_resid_mid / hook_mlp_out"
    if site not in found.probed:
        found.probed[site] = _probe(model, found, site)
    why = found.probed[site]
    return (None, why) if why else (found, "")


def _probe(model, lay: Layered, site: str) -> str | None:
    """None if layered passes (full logits, and the packed head) give patch_residual's bits
    for a few cells of a small batch-2 sweep, else why not."""
    gen = torch.Generator().manual_seed(0)
    d_vocab = model.cfg.d_vocab
    clean = torch.randint(0, d_vocab, (2, 7), generator=gen).to(model.cfg.device)
    donor = torch.randint(0, d_vocab, (2, 7), generator=gen).to(model.cfg.device)
    n = lay.n_layers
    layers = sorted({0, n // 2, n - 1})
    trace = capture_residuals(model, donor, sites=(site,), layers=layers)
    with torch.no_grad():
        inp = capture_inputs(model, clean, trace, forward(model, clean), site, layers)
        cells = [(0, 3), (n - 1, None), (n // 2, 6), (n - 1, 0)]
        refs = {
            c: patch_residual(model, clean, layer=c[0], source=trace, positions=c[1], site=site)
            for c in cells
        }
        full = dict(exact_logits(lay, inp, cells, last_only=False))
        packed = dict(exact_logits(lay, inp, cells, last_only=True))
    for c in cells:
        if not torch.equal(full[c], refs[c]) or not torch.equal(packed[c], refs[c][:, -1:]):
            return (
                f"the layered pass at {site} differs from one patched forward pass "
                f"(probed at layer {c[0]}, position {c[1]})"
            )
    return None
