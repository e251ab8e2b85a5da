"""ipywidgets + plotly FigureWidget explorers. They only wire controls to the functions in
explore.py; every number shown comes from there.

Each explorer has `.box` (what is displayed), `.figure` (a plotly FigureWidget), its
controls as attributes, and `.status` (an HTML line with errors or a summary).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable

import ipywidgets as W
import plotly.graph_objects as go
import torch

from . import explore
from .models import load_model
from .policies import CachePolicy

Loader = Callable[[str, torch.dtype], object]


@functools.cache
def _cached_load(name: str, dtype: torch.dtype):
    return load_model(name, dtype=dtype)


class _Explorer:
    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)

    def _guard(self, fn) -> None:
        """Run an update; show a bad-input error in the status line instead of raising."""
        try:
            fn()
        except (ValueError, RuntimeError) as err:
            self.status.value = f"<b style='color:#b00'>{html.escape(str(err))}</b>"


class PatchingExplorer(_Explorer):
    """Clean and donor prompts, a site and positions -> KL heatmap (layer x patched position)
    and the top next token per layer when the chosen positions are patched."""

    def __init__(
        self,
        model_names=("tiny-llama", "tiny-gpt2"),
        *,
        clean: str,
        donor: str,
        loader: Loader = _cached_load,
    ) -> None:
        self.loader = loader
        self.model_name = W.Dropdown(options=list(model_names), description="model")
        self.clean = W.Text(value=clean, description="clean", layout=W.Layout(width="95%"))
        self.donor = W.Text(value=donor, description="donor", layout=W.Layout(width="95%"))
        self.site = W.Dropdown(options=["resid_pre", "resid_mid", "resid_post"], description="site")
        self.positions = W.Text(value="all", description="positions")
        self.status = W.HTML()
        self.tokens = W.HTML()
        self.figure = go.FigureWidget(
            data=[go.Heatmap(z=[[0]], colorscale="Viridis", colorbar=dict(title="KL"))],
            layout=dict(
                title=dict(text="patching"),
                height=380,
                width=640,
                xaxis=dict(title="patched token (position: token)", tickangle=-45),
                yaxis=dict(title="layer", dtick=1, tickformat="d"),  # integer layers only
                margin=dict(l=60, r=10, t=40, b=90),
            ),
        )
        for control in (self.model_name, self.clean, self.donor, self.site, self.positions):
            control.observe(lambda change: self.refresh(), names="value")
        self.box = W.VBox(
            [
                W.HBox([self.model_name, self.site, self.positions]),
                self.clean,
                self.donor,
                self.figure,
                self.status,
                self.tokens,
            ]
        )
        self.refresh()

    def refresh(self) -> None:
        self._guard(self._refresh)

    def _refresh(self) -> None:
        model = self.loader(self.model_name.value, torch.float32)
        n_pos = model.to_tokens(self.clean.value).shape[1]
        positions = explore.parse_positions(self.positions.value, n_pos)
        grid = explore.patching_heatmap(
            model, self.clean.value, self.donor.value, site=self.site.value
        )
        changes = explore.top_token_changes(
            model, self.clean.value, self.donor.value, site=self.site.value, positions=positions
        )
        labels = explore.position_labels(model, self.clean.value)
        with self.figure.batch_update():
            self.figure.data[0].z = grid.values.tolist()
            self.figure.data[0].x = list(grid.columns)
            self.figure.data[0].y = list(grid.index)
            # numeric x with token tick labels: repeated tokens stay separate columns
            self.figure.layout.xaxis.tickmode = "array"
            self.figure.layout.xaxis.tickvals = list(grid.columns)
            self.figure.layout.xaxis.ticktext = [labels[p] for p in grid.columns]
            self.figure.layout.title.text = (
                f"{self.model_name.value} {self.site.value}: KL(clean || patched) at the "
                f"last position, one token patched ({grid.attrs.get('path', '?')} sweep)"
            )
        self.tokens.value = changes.to_html(index=False)
        self.status.value = (
            f"{int(changes.changed.sum())}/{len(changes)} layers change the "
            f"top token when positions={self.positions.value!r} are patched"
        )


class ReconstructionExplorer(_Explorer):
    """Model, dtype and rebuild shape -> per-layer max |error| of k, v and rotated k, with
    bitwise-equal layers marked."""

    def __init__(
        self, model_names=("tiny-llama", "tiny-gemma3"), *, text: str, loader: Loader = _cached_load
    ) -> None:
        self.loader = loader
        self.text = text
        self.model_name = W.Dropdown(options=list(model_names), description="model")
        self.dtype = W.Dropdown(
            options=[("float32", torch.float32), ("bfloat16", torch.bfloat16)], description="dtype"
        )
        self.shape = W.Dropdown(
            options=["same", "one_token", "one_token_padded8"], description="rebuild"
        )
        self.status = W.HTML()
        self.figure = go.FigureWidget(
            data=[go.Bar(name=t, x=[], y=[], text=[]) for t in ("k", "v", "rot_k")],
            layout=dict(
                title=dict(text="reconstruction"),
                barmode="group",
                height=360,
                width=640,
                xaxis_title="layer",
                yaxis_title="max |rebuilt - hook|",
                margin=dict(l=60, r=10, t=40, b=40),
            ),
        )
        for control in (self.model_name, self.dtype, self.shape):
            control.observe(lambda change: self.refresh(), names="value")
        self.box = W.VBox(
            [W.HBox([self.model_name, self.dtype, self.shape]), self.figure, self.status]
        )
        self.refresh()

    def refresh(self) -> None:
        self._guard(self._refresh)

    def _refresh(self) -> None:
        model = self.loader(self.model_name.value, self.dtype.value)
        df = explore.reconstruction_view(model, self.text, shape=self.shape.value)
        with self.figure.batch_update():
            for trace in self.figure.data:
                part = df[df.tensor == trace.name]
                trace.x = part.layer.tolist()
                trace.y = part.max_abs_err.tolist()
                trace.text = ["=" if eq else "" for eq in part.bitwise_equal]
            self.figure.layout.title.text = (
                f"{self.model_name.value} {self.dtype.label} "
                f"rebuild={self.shape.value} ('=' bitwise equal)"
            )
        n_eq = int(df.bitwise_equal.sum())
        self.status.value = f"{n_eq}/{len(df)} (layer, tensor) pairs bitwise equal"


class GenerationComparer(_Explorer):
    """Two policies side by side: tokens aligned (first divergence highlighted) and the
    bytes each holds at every step."""

    def __init__(
        self, model, prompt, policies: dict[str, CachePolicy], *, max_new_tokens: int = 16
    ) -> None:
        self.model = model
        self.prompt = prompt
        self.policies = policies
        names = list(policies)
        self.policy_a = W.Dropdown(options=names, value=names[0], description="A")
        self.policy_b = W.Dropdown(options=names, value=names[-1], description="B")
        self.n_new = W.IntSlider(value=max_new_tokens, min=2, max=64, description="new tokens")
        self.status = W.HTML()
        self.tokens = W.HTML()
        self.figure = go.FigureWidget(
            data=[
                go.Scatter(name="A", x=[], y=[], mode="lines+markers"),
                go.Scatter(name="B", x=[], y=[], mode="lines+markers"),
            ],
            layout=dict(
                title=dict(text="bytes held"),
                height=320,
                width=640,
                xaxis_title="step",
                yaxis_title="bytes held",
                margin=dict(l=60, r=10, t=40, b=40),
            ),
        )
        for control in (self.policy_a, self.policy_b, self.n_new):
            control.observe(lambda change: self.refresh(), names="value")
        self.box = W.VBox(
            [
                W.HBox([self.policy_a, self.policy_b, self.n_new]),
                self.tokens,
                self.figure,
                self.status,
            ]
        )
        self.refresh()

    def refresh(self) -> None:
        self._guard(self._refresh)

    def _refresh(self) -> None:
        out = explore.compare_generations(
            self.model,
            self.prompt,
            self.policies[self.policy_a.value],
            self.policies[self.policy_b.value],
            max_new_tokens=self.n_new.value,
        )
        first = out["first_divergence"]
        cells = []
        for row in out["aligned"].itertuples():
            style = "background:#fdd" if first is not None and row.step >= first else ""
            cells.append(f"<td style='{style}'>{html.escape(row.a)}<br>{html.escape(row.b)}</td>")
        self.tokens.value = "<table><tr><td><b>A<br>B</b></td>" + "".join(cells) + "</tr></table>"
        memory = out["memory"]
        with self.figure.batch_update():
            self.figure.data[0].x = self.figure.data[1].x = memory.step.tolist()
            self.figure.data[0].y = memory.a_bytes.tolist()
            self.figure.data[1].y = memory.b_bytes.tolist()
            self.figure.data[0].name = f"A: {self.policy_a.value}"
            self.figure.data[1].name = f"B: {self.policy_b.value}"
            self.figure.layout.title.text = (
                f"bytes held: {self.policy_a.value} vs {self.policy_b.value}"
            )
        where = "none" if first is None else f"step {first}"
        self.status.value = f"token match {out['token_match']:.0%}; first divergence: {where}"
