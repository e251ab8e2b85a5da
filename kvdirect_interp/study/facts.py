"""What the study's plans and verdicts need to know of a model, without its weights.

Every run and merge writes them next to the model's stored tables, OUT/<model>/model.json,
so a stored study can be planned (units done of the plan), judged and plotted on a machine
that has not installed that model: the notebooks show all three packaged models' stored
studies while CI installs only the default one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cost import Arch
from ..hooks import SITES, hook_name
from ..memory import Shape

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FILE = "model.json"


@dataclass(frozen=True)
class ModelFacts:
    """One model's numbers the study reads: its residual sites (claim 2's plan), its shape
    (bytes per token: claim 4's verdict, claim 5's equal-memory budgets), its architecture
    (FLOPs per step: claim 5's cost) and its own parameter bytes (claim 4's RSS is shown
    next to them). Taken from the float32 model the study runs on."""

    name: str
    sites: tuple[str, ...]
    shape: Shape
    arch: Arch
    weights_bytes: int

    @classmethod
    def of(cls, model: TransformerBridge, name: str) -> ModelFacts:
        return cls(
            name=name,
            sites=tuple(s for s in SITES if hook_name(0, s) in model.hook_dict),
            shape=Shape.of(model),
            arch=Arch.of(model),
            weights_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelFacts:
        d = json.loads(text)
        return cls(
            name=d["name"],
            sites=tuple(d["sites"]),
            shape=Shape(**d["shape"]),
            arch=Arch(**d["arch"]),
            weights_bytes=int(d["weights_bytes"]),
        )


def facts_of(model, name: str = "") -> ModelFacts:
    """`model` as ModelFacts: a loaded model's are taken from it, ModelFacts pass through."""
    if isinstance(model, ModelFacts):
        return model
    if not hasattr(model, "hook_dict"):
        raise TypeError(f"expected a loaded model or ModelFacts, got {type(model).__name__}")
    return ModelFacts.of(model, name or model.cfg.model_name)


def write(out: Path | str, facts: ModelFacts) -> Path:
    path = Path(out) / facts.name / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(facts.to_json() + "\n")
    return path


def read(out: Path | str, model_name: str) -> ModelFacts | None:
    """The facts stored next to a model's tables, or None where none were written."""
    path = Path(out) / model_name / FILE
    return ModelFacts.from_json(path.read_text()) if path.is_file() else None
