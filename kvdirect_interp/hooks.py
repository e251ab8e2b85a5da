"""Capture and patch the residual stream at every layer: the one hook mechanism.

Every hook lives for one forward pass and is removed when it ends, also on error. Hook
names are TransformerLens's: `blocks.{layer}.hook_{site}` with site in resid_pre /
resid_mid / resid_post. Every forward pass of the package goes through `forward`, which
asks the model's `FastPath` (fastpath.py) which path to take: the bridge with its
`hooks()` context manager, or the unwrapped HF tree, whose decoder layers run resid_pre
hooks (and attention modules pattern hooks) when nothing else is hooked and a probe found
that tree gives the bridge's bits. `fast_path(model).last` says which path ran and why;
`path="bridge"` forces the reference path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ._checks import check_finite, check_layer, check_layers, check_positions
from .fastpath import Path, fast_path
from .patch_metrics import METRICS as METRICS  # re-exported: hooks.METRICS
from .tokens import TokensLike, to_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SITES = ("resid_pre", "resid_mid", "resid_post")
Hook = tuple[str, Callable]  # (TransformerLens hook name, fn(tensor, hook) -> tensor | None)


def forward(
    model: TransformerBridge,
    tokens: torch.Tensor,
    *,
    hooks: Sequence[Hook] = (),
    path: Path = "auto",
    **kwargs,
) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] of `model` for `tokens` [batch, pos] (int64), with
    `hooks` attached for this call only (always removed).

    path="auto" takes the fast path (an unwrapped HF tree over the bridge's own tensors,
    probed bitwise equal) when nothing else is hooked and every hook point has a probed
    counterpart there, else the bridge; "bridge" forces the bridge (the reference, e.g. to
    rule out a suspected fast-path difference); "fast" raises where the fast path cannot
    run, naming why. Other keyword arguments (past_key_values, logits_to_keep) go to the
    model. `fast_path(model).last` records the path taken and why.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dim() != 2:
        raise ValueError(
            "tokens must be an integer tensor [batch, pos]; use to_tokens() for "
            f"text, got {type(tokens).__name__} "
            f"{tuple(getattr(tokens, 'shape', ()))}"
        )
    return fast_path(model).forward(tokens, fwd_hooks=hooks, path=path, **kwargs)


def hook_name(layer: int, site: str) -> str:
    return f"blocks.{layer}.hook_{site}"


def check_site(model: TransformerBridge, site: str) -> str:
    accepted = [s for s in SITES if hook_name(0, s) in model.hook_dict]
    if site not in accepted:
        why = ""
        if site == "resid_mid" and site not in accepted:
            why = " (this model runs attention and MLP in parallel: no residual between them)"
        raise ValueError(f"unknown site {site!r}{why}; accepted for this model: {accepted}")
    return site


@dataclass
class ResidualTrace:
    """Residual streams captured in one forward pass.

    tokens: [batch, pos]; logits: [batch, pos, d_vocab];
    resid[site]: [len(layers), batch, pos, d_model], row i holding layer layers[i].
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    resid: dict[str, torch.Tensor]
    layers: list[int] = field(default_factory=list)

    def at(self, site: str, layer: int) -> torch.Tensor:
        """The residual [batch, pos, d_model] at one site and layer."""
        if site not in self.resid:
            raise ValueError(f"site {site!r} was not captured; captured: {list(self.resid)}")
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not captured; captured: {self.layers}")
        return self.resid[site][self.layers.index(layer)]


@torch.no_grad()
def run_and_capture(
    model: TransformerBridge, toks: torch.Tensor, names: Sequence[str], *, require_all: bool = True
):
    """(logits, {hook name: tensor}) from one forward pass. Every named hook must fire
    unless require_all=False (some bridges define hooks they never call)."""
    store: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable:
        # keyed by our name: hook.name may be the alias target (e.g. blocks.0.hook_in)
        def keep(tensor, hook):
            store[name] = tensor.detach().clone()

        return keep

    logits = forward(model, toks, hooks=[(name, keeper(name)) for name in names])
    missing = [name for name in names if name not in store]
    if missing and require_all:
        raise RuntimeError(f"hooks did not fire during the forward pass: {missing[:4]}")
    return logits.detach(), store


@torch.no_grad()
def capture_residuals(
    model: TransformerBridge,
    tokens: TokensLike,
    *,
    sites: Sequence[str] = ("resid_pre",),
    layers: Sequence[int] | None = None,
) -> ResidualTrace:
    """Run the model once and keep the residual stream at the given sites and layers."""
    if isinstance(sites, str):
        sites = (sites,)
    sites = [check_site(model, s) for s in sites]
    layers = check_layers(model, layers)
    toks = to_tokens(model, tokens)
    logits, store = run_and_capture(model, toks, [hook_name(l, s) for s in sites for l in layers])
    resid = {s: torch.stack([store[hook_name(l, s)] for l in layers]) for s in sites}
    return ResidualTrace(toks, logits, resid, list(layers))


SourceLike = torch.Tensor | ResidualTrace | TokensLike


def _source_residual(model, source: SourceLike, layer: int, site: str) -> torch.Tensor:
    if isinstance(source, ResidualTrace):
        return source.at(site, layer)
    if isinstance(source, torch.Tensor) and source.is_floating_point():
        if source.dim() != 3:
            raise ValueError(
                f"source residual must be [batch, pos, d_model], got shape {tuple(source.shape)}"
            )
        return source
    return capture_residuals(model, source, sites=(site,), layers=[layer]).at(site, layer)


def _replace_hook(source: torch.Tensor, positions: list[int] | None) -> Callable:
    def replace(tensor, hook):
        if positions is None:
            return source.to(tensor.dtype).clone()
        out = tensor.clone()
        out[:, positions] = source[:, positions].to(tensor.dtype)
        return out

    return replace


def patch_hooks(
    layer: int, site: str, source: torch.Tensor, positions: list[int] | None
) -> list[tuple[str, Callable]]:
    """Forward hooks that replace the residual stream at (layer, site) with `source` (at
    `positions`, or everywhere for None)."""
    replace = _replace_hook(source, positions)
    return edit_hooks(layer, site, lambda tensor: replace(tensor, None))


def edit_hooks(
    layer: int, site: str, edit: Callable[[torch.Tensor], torch.Tensor]
) -> list[tuple[str, Callable]]:
    """Forward hooks that replace the residual stream x [batch, pos, d_model] at (layer,
    site) with edit(x), as a forward pass with that residual computes it.

    In TransformerBridge, hook_resid_mid is the input of ln2 only: the block adds the MLP
    output to its own copy of the mid residual, so editing the hook alone patches the MLP's
    input, not the stream. For resid_mid we therefore also rebuild the block output as
    edited_mid + mlp_out, the same addition the block performs, so the result is what a
    forward pass with that residual computes, bit for bit.
    """
    if site != "resid_mid":
        return [(hook_name(layer, site), lambda tensor, hook: edit(tensor))]
    state: dict[str, torch.Tensor] = {}

    def set_mid(tensor, hook):
        state["mid"] = edit(tensor)
        return state["mid"]

    def keep_mlp_out(tensor, hook):
        state["mlp_out"] = tensor
        return tensor

    def rebuild_post(tensor, hook):
        return state.pop("mid") + state.pop("mlp_out")

    return [
        (hook_name(layer, "resid_mid"), set_mid),
        (f"blocks.{layer}.hook_mlp_out", keep_mlp_out),
        (hook_name(layer, "resid_post"), rebuild_post),
    ]


@torch.no_grad()
def patch_residual(
    model: TransformerBridge,
    tokens: TokensLike,
    *,
    layer: int,
    source: SourceLike,
    positions: Sequence[int] | int | None = None,
    site: str = "resid_pre",
) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] of `tokens` with the residual at (layer, site) replaced.

    source: a residual [batch, pos, d_model] of exactly the target's shape, a ResidualTrace
    that holds (site, layer), or donor tokens/text (captured here). positions=None replaces
    every position; otherwise only the listed ones, each taken from the same position of
    the source. Positions are Python-style indices: -1 is the last token, as in
    `tokens[:, -1]`; layers are 0..n_layers-1 (no negative layers). A source holding NaN
    or inf at the patched positions is refused.
    """
    check_layer(model, layer)
    check_site(model, site)
    toks = to_tokens(model, tokens)
    resid = _source_residual(model, source, layer, site)
    want = (toks.shape[0], toks.shape[1], model.cfg.d_model)
    if tuple(resid.shape) != want:
        raise ValueError(
            f"source residual has shape {tuple(resid.shape)} but the target needs "
            f"[batch, pos, d_model] = {list(want)}; give a donor of the same "
            "batch size and token length"
        )
    pos = check_positions(positions, toks.shape[1])
    # a NaN or inf would be patched in silently and every logit after it would be NaN
    check_finite(resid if pos is None else resid[:, pos], "source residual")
    return forward(model, toks, hooks=patch_hooks(layer, site, resid, pos)).detach()


def sweep_inputs(
    model: TransformerBridge, clean, donor, *, site: str, layers: Sequence[int]
) -> tuple[torch.Tensor, ResidualTrace]:
    """The clean tokens [batch, pos] and the donor's residuals at `site` and `layers` that
    a sweep (exact or attribution) patches in, checked: equal shapes, finite residuals."""
    clean_toks = to_tokens(model, clean)
    donor_trace = capture_residuals(model, donor, sites=(site,), layers=layers)
    if donor_trace.tokens.shape != clean_toks.shape:
        raise ValueError(
            f"clean tokens {tuple(clean_toks.shape)} and donor tokens "
            f"{tuple(donor_trace.tokens.shape)} differ in shape; patching needs "
            "equal batch size and token length"
        )
    # a NaN or inf would be patched in silently (patch_residual refuses it per cell)
    check_finite(donor_trace.resid[site], "donor residual")
    return clean_toks, donor_trace


def recovery(df: pd.DataFrame, metric: str) -> pd.Series:
    """(value - baseline_clean) / (baseline_donor - baseline_clean) per row of a sweep
    table; NaN where the two baselines are equal (nothing to recover)."""
    span = df.baseline_donor - df.baseline_clean
    return ((df[metric] - df.baseline_clean) / span).where(span != 0)
