"""`kvdirect-interp verify`: every claim measured at a small size, judged by `verdicts`.

Each check measures with `experiments`' helpers (the ones the notebooks use), writes what it
measured as the JSON-ready inputs of its claim's verdict function, and applies that function
to those very inputs: the verdict printed is the one anyone gets by applying
`verdicts.claimN` to the inputs in the --json file (`JUDGES` says how each is applied).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from . import experiments as ex
from . import verdicts as vd
from .cost import Arch
from .kv import reconstruction_report
from .memory import Shape
from .policies import FullKV, KVDirect
from .policies.storage import bytes_per_token_table
from .results import claim5_baselines, claim5_summary
from .study.store import records

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# claim number -> how its verdict function is applied to the inputs verify wrote
JUDGES: dict[str, Callable[[dict], vd.Verdict]] = {
    "1": lambda i: vd.claim1(pd.DataFrame(i["report"])),
    "2": lambda i: vd.claim2(**i),
    "3": lambda i: vd.claim3(pd.DataFrame(i["runs"]), logit_noise=i["logit_noise"]),
    "4": lambda i: vd.claim4(
        pd.DataFrame(i["turns"]), pd.DataFrame(i["bytes_per_token"]), cost=pd.DataFrame(i["cost"])
    ),
    "5": lambda i: vd.claim5(
        pd.DataFrame(i["agreement"]), pd.DataFrame(i["intervals"]), cost=pd.DataFrame(i["cost"])
    ),
    "6": lambda i: vd.claim6(pd.DataFrame(i["timings"])),
}


@dataclass(frozen=True)
class Check:
    """One claim checked: its number, the inputs its verdict function took (JSON-ready:
    small tables as lists of row dicts) and the verdict that function returned."""

    claim: str
    inputs: dict
    verdict: vd.Verdict
    seconds: float = 0.0

    def as_json(self) -> dict:
        v = self.verdict
        return {
            "claim": v.claim,
            "paper": v.paper,
            "verdict": v.verdict,
            "price": v.price,
            "measured": v.measured,
            "parts": [
                {"name": p.name, "paper": p.paper, "measured": p.measured, "held": p.held}
                for p in v.parts
            ],
            "numbers": v.numbers,
            "inputs": self.inputs,
            "seconds": self.seconds,
        }


def _judged(claim: str, inputs: dict, start: float) -> Check:
    inputs = json.loads(json.dumps(inputs))  # exactly what --json holds
    verdict = JUDGES[claim](inputs)
    return Check(claim, inputs, verdict, round(time.perf_counter() - start, 2))


def _equal_length_pair(model: TransformerBridge, texts: list[str]) -> tuple[str, str]:
    """Two prompts from the set with the same token length (patching needs equal shapes)."""
    by_len: dict[int, str] = {}
    for t in texts:
        n = model.to_tokens(t).shape[1]
        if n in by_len:
            return by_len[n], t
        by_len[n] = t
    raise ValueError("no two prompts of equal token length in the set")


def claim1(model: TransformerBridge, text: str) -> Check:
    """Every layer's K/V rebuilt from resid_pre with the forward pass's shapes and one token
    at a time (the report's rows: the verdict function's input)."""
    start = time.perf_counter()
    report = reconstruction_report(model, text, shapes=("same", "one_token"))
    return _judged("1", {"report": records(report)}, start)


def claim2(model: TransformerBridge, clean: str, donor: str) -> Check:
    """The donor's whole resid_pre patched in at every layer, and the last position alone."""
    start = time.perf_counter()
    kl = ex.patching_kl(model, [("pair", clean, donor)])
    inputs = {
        "kl_whole_max": float(kl.kl_whole.max()),
        "kl_single_position_max": float(kl.kl_last.max()),
        "layers": model.cfg.n_layers,
        "sites": ["resid_pre"],
        "task_pairs": 1,
    }
    return _judged("2", inputs, start)


def claim3(model: TransformerBridge, prompt, n_new: int) -> Check:
    """Greedy tokens with the full cache and with none; per run the first divergence and
    the cached run's top-2 margin there; the logit noise on steps with the same context."""
    start = time.perf_counter()
    runs = ex.no_cache_runs(model, [prompt], max_new_tokens=n_new)
    cols = ["run", "token_match", "first_divergence", "divergence_margin", "noise"]
    inputs = {
        "runs": records(runs[[*cols, "bitwise_steps", "steps"]]),
        "logit_noise": float(runs.noise.max()),
    }
    return _judged("3", inputs, start)


def formula_cost(model: TransformerBridge, policies, context: int = 1024) -> list[dict]:
    """The verdicts' cost table from the policies' own FLOPs formulas at `context` tokens
    (FullKV first; no tokens/s: verify times no decode)."""
    arch = Arch.of(model)
    return [
        {"policy": p.name, "context": context, "flops_per_step": p.step_flops(arch, context)}
        for p in [FullKV(), *policies]
    ]


def claim4(model: TransformerBridge, turns: int, n_new: int, window: int) -> Check:
    """The chat's first `turns` turns under FullKV and KV-Direct every_layer and token_ids
    (per-turn bytes held), and the model's bytes per token of every storage kind."""
    start = time.perf_counter()
    chat = ex.load_data("chat_20_turns.json")["turns"][:turns]
    policies = [
        FullKV(),
        # the fast rebuild (one GEMM per step): bytes do not depend on it; exactness is
        # claim 5's question
        KVDirect(window, exact_shapes=False),
        KVDirect(window, checkpoint="token_ids", exact_shapes=False),
    ]
    timeline = pd.concat(
        [ex.run_chat(model, p, turns=chat, max_new_tokens=n_new, progress=False) for p in policies],
        ignore_index=True,
    )
    replay = {p.name: getattr(p, "replay", None) if p.replays else None for p in policies[1:]}
    timeline = timeline.assign(
        transient_bytes=timeline.rebuilt_bytes_max, replay=timeline.policy.map(replay)
    )
    cols = ["policy", "turn", "total_tokens", "kv_bytes", "residual_bytes", "token_ids_bytes"]
    inputs = {
        "turns": records(timeline[[*cols, "held_bytes", "transient_bytes", "replay"]]),
        "bytes_per_token": records(bytes_per_token_table([Shape.of(model)])),
        "cost": formula_cost(model, policies[1:]),
    }
    return _judged("4", inputs, start)


def claim5(model: TransformerBridge, prompts: list[str], budgets: Sequence[int], n_new: int):
    """Every eviction baseline and every KV-Direct mode against FullKV, per budget. Only
    rows holding fewer bytes than FullKV are evidence: on grouped-query models those of
    first_layer and token_ids (every_layer holds more, min_bytes is the full cache, and the
    verdict names them)."""
    start = time.perf_counter()
    df = ex.agreement_table(
        model,
        prompts,
        policies={**ex.BASELINES, **ex.KVDIRECT_MODES},
        budgets=budgets,
        max_new_tokens=n_new,
        progress=False,
    )
    inputs = {
        "agreement": records(df),
        "intervals": records(claim5_summary(claim5_baselines(df))),
        "cost": formula_cost(model, [make(64) for make in ex.KVDIRECT_MODES.values()]),
    }
    return _judged("5", inputs, start)


def claim6(
    model: TransformerBridge,
    n_tokens: Sequence[int] = (64, 512),
    batch_sizes: Sequence[int] = (1, 4),
    repeats: int = 3,
) -> Check:
    """One layer's K/V rebuilt from residuals vs read (copied), per batch and token count,
    where the model is (RAM tier only: the study's claim 6 adds disk, and the GPU where
    there is one)."""
    start = time.perf_counter()
    df = ex.rebuild_vs_read(
        model, n_tokens=n_tokens, batch_sizes=batch_sizes, repeats=repeats, gpu=False
    )
    return _judged("6", {"timings": records(df)}, start)


def run(model: TransformerBridge, *, progress: bool = True) -> list[Check]:
    from tqdm.auto import tqdm

    prompts = ex.load_data("prompts.json")["prompts"]
    clean, donor = _equal_length_pair(model, ex.load_data("patch_pairs.json")["texts"])
    chat = [{"role": "user", "content": "Write two sentences about the ocean."}]
    checks = [
        lambda: claim1(model, prompts[0]),
        lambda: claim2(model, clean, donor),
        lambda: claim3(model, chat, 24),
        lambda: claim4(model, turns=4, n_new=24, window=32),
        lambda: claim5(model, prompts[:2], budgets=(16, 32), n_new=16),
        lambda: claim6(model),
    ]
    return [check() for check in tqdm(checks, desc="verify", disable=not progress)]


def table(checks: Sequence[Check]) -> pd.DataFrame:
    """One row per claim: claim, paper, verdict, measured (`verdicts.table`)."""
    return vd.table([c.verdict for c in checks])
