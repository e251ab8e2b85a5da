"""The measurements the claims rest on, as DataFrames: one home for what `verify` and the
notebooks both measure (the chat, cross-task patching, no-cache runs with their divergence
margins, agreement with the full cache; claim 6's timings, rebuild vs read and decode speed
per policy, live in speed.py and are re-exported here)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from tqdm.auto import tqdm

from .generation import Session, forced_and_free, generate, held_bytes
from .hooks import capture_residuals, patch_residual
from .metrics import kl_divergence, token_match
from .observers import PeakMemory
from .policies import CachePolicy, FullKV, NoCache, registry
from .resources import load_data
from .sampling import GREEDY, Sampling
from .snapshot import load_session, save_session
from .speed import (  # noqa: F401  (claim 6's, re-exported: ex.rebuild_vs_read)
    decode_side_by_side,
    decode_speed,
    rebuild_vs_read,
)
from .sweep import patch_sweep

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def run_chat(
    model: TransformerBridge,
    cache: CachePolicy | None = None,
    *,
    turns: Sequence[str] | None = None,
    max_new_tokens: int = 48,
    progress: bool = True,
    per_step: bool = False,
    snapshot: Path | str | None = None,
    part_info: dict | None = None,
) -> pd.DataFrame:
    """The multi-turn chat (data/chat_20_turns.json by default) under one policy, keeping
    its state between turns. One row per turn: the policy's name, tokens so far, bytes held
    by kind at the end of the turn, the largest transient rebuild, the process's peak RSS,
    seconds. per_step=True adds rebuilt_bytes_per_step: the transient rebuild of each
    forward pass of the turn (the turn's feed first), a list of ints.

    snapshot: a file where the chat's state is saved after every turn (snapshot.py); a call
    finding one made with the same arguments resumes after its last turn, so an hours-long
    chat that is stopped loses at most one turn. Rows then say which call measured them:
    `part` (0 for the first call, 1 after the first resume, ...) and part_info's items (a
    dict of scalars about this call, such as where it ran) as `part_<key>` columns."""
    chat = load_data("chat_20_turns.json")
    turns = chat["turns"] if turns is None else list(turns)
    policy = cache if cache is not None else FullKV()
    what = {  # a snapshot resumes only the chat it was made for
        "policy": repr(policy),
        "turns": turns,
        "max_new_tokens": max_new_tokens,
        "per_step": per_step,
        "system": chat["system"],
    }
    session, rows, part = Session(model, cache, system=chat["system"]), [], 0
    if snapshot is not None and Path(snapshot).exists():
        session, saved = load_session(snapshot, model)
        if saved.get("chat") != what:
            raise ValueError(
                f"{snapshot} is the snapshot of another chat (policy, turns or settings "
                "differ): delete it to start this chat over, or pass another path"
            )
        rows, part = saved["rows"], saved["parts"]
    tag = {"part": part, **{f"part_{k}": v for k, v in (part_info or {}).items()}}
    bar = tqdm(
        total=len(turns), initial=len(rows), desc=f"chat {policy.name}", disable=not progress
    )
    for i, text in enumerate(turns[len(rows) :], len(rows) + 1):  # those not said before
        start = time.perf_counter()
        out = session.say(text, max_new_tokens=max_new_tokens, observer=PeakMemory())
        last = out.memory[-1]
        rows.append(
            {
                "policy": policy.name,
                "turn": i,
                "total_tokens": last["tokens_seen"],
                "tokens_generated": len(out.memory) - 1,
                "kv_bytes": last.get("kv_bytes", 0),
                "residual_bytes": last.get("residual_bytes", 0),
                "token_ids_bytes": last.get("token_ids_bytes", 0),
                "held_bytes": held_bytes(last),
                "rebuilt_bytes_max": max(m["rebuilt_bytes"] for m in out.memory),
                "peak_rss_bytes": max((m["peak_rss_bytes"] or 0) for m in out.memory),
                "seconds": time.perf_counter() - start,
                **(tag if snapshot is not None else {}),
            }
        )
        if per_step:
            rows[-1]["rebuilt_bytes_per_step"] = [m["rebuilt_bytes"] for m in out.memory]
        if snapshot is not None:
            save_session(session, snapshot, {"chat": what, "rows": rows, "parts": part + 1})
        bar.update()
    bar.close()
    return pd.DataFrame(rows)


# ---- claim 2: patching ------------------------------------------------------------------


@torch.no_grad()
def patching_kl(
    model: TransformerBridge,
    pairs: Sequence[tuple[str, str, str]],
    *,
    site: str = "resid_pre",
) -> pd.DataFrame:
    """Cross-task patching, per pair (label, clean, donor) of equal token length and per
    layer: kl_whole, the largest D_KL(donor || patched) over positions with the donor's
    whole residual patched in at that layer (0.0 by construction of a layered computation),
    and kl_last, at the last position with only the last position patched (the contrast:
    the other positions still carry the clean prompt)."""
    rows = []
    for label, clean, donor in pairs:
        whole = patch_sweep(model, clean, donor, site=site, progress=False)
        whole = whole.groupby("layer").kl_to_donor.max()
        trace = capture_residuals(model, donor, sites=(site,))
        for l in range(model.cfg.n_layers):
            patched = patch_residual(model, clean, layer=l, source=trace, site=site, positions=[-1])
            rows.append(
                {
                    "pair": label,
                    "layer": l,
                    "kl_whole": float(whole.loc[l]),
                    "kl_last": float(kl_divergence(trace.logits, patched)[0, -1]),
                }
            )
    return pd.DataFrame(rows)


# ---- claim 3: generating without a cache ------------------------------------------------


def top2_margin(logits: torch.Tensor) -> float:
    """Top-1 minus top-2 logit of batch row 0 ([batch, d_vocab]): how far argmax is from a tie."""
    top = logits[0].double().topk(2).values
    return float(top[0] - top[1])


@torch.no_grad()
def no_cache_runs(
    model: TransformerBridge,
    prompts: Sequence,
    *,
    samplings: dict[str, Sampling] | None = None,
    max_new_tokens: int = 32,
) -> pd.DataFrame:
    """Each prompt generated with the full cache and with none (every step re-runs the whole
    sequence), under each sampling (name -> Sampling; greedy only by default). One row per
    (prompt, mode): run (a label), token_match, first_divergence (step of the first
    differing token; None when identical), divergence_margin (the cached run's top-2 logit
    margin at that step), noise (max |cached - uncached| logit over the steps with the same
    context: up to and including the first divergence), bitwise_steps, and per step:
    margin (the cached run's top-2 margin), equal (tokens equal), drift (max |difference|)."""
    samplings = {"greedy": GREEDY} if samplings is None else samplings
    rows = []
    for i, prompt in enumerate(prompts):
        for mode, sampling in samplings.items():
            a, b = (
                generate(
                    model,
                    prompt,
                    max_new_tokens=max_new_tokens,
                    cache=cache,
                    sampling=sampling,
                    keep_logits=True,
                )
                for cache in (FullKV(), NoCache())
            )
            m = token_match(a.new_tokens, b.new_tokens)
            first = m.first_divergence
            drift = [float((x - y).abs().max()) for x, y in zip(a.logits, b.logits, strict=True)]
            margins = [top2_margin(x) for x in a.logits]
            rows.append(
                {
                    "run": f"prompt {i} {mode}",
                    "prompt": i,
                    "mode": mode,
                    "token_match": m.fraction,
                    "first_divergence": first,
                    "divergence_margin": None if first is None else margins[first],
                    "noise": max(drift[: (len(drift) if first is None else first + 1)]),
                    "bitwise_steps": sum(d == 0.0 for d in drift),
                    "steps": len(drift),
                    "margin": margins,
                    "equal": (a.new_tokens[0] == b.new_tokens[0]).tolist(),
                    "drift": drift,
                }
            )
    return pd.DataFrame(rows)


def decisive_steps(runs: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per run of `no_cache_runs`: first_near_tie, the first step whose cached top-2 margin
    is <= threshold (None if none), decisive_steps, the steps before it, and decisive_equal,
    whether the tokens agree on all of them. Where the margin exceeds the logit noise, both
    runs must pick the same argmax on any machine; after a near-tie the contexts may differ,
    so no later step is compared."""
    out = runs.copy()
    ties = [next((s for s, m in enumerate(ms) if m <= threshold), None) for ms in runs.margin]
    out["first_near_tie"] = ties
    out["decisive_steps"] = [
        len(e) if t is None else t for t, e in zip(ties, runs.equal, strict=True)
    ]
    out["decisive_equal"] = [
        all(e[:n]) for e, n in zip(runs.equal, out.decisive_steps, strict=True)
    ]
    return out


# Views of the policy registry (policies/registry.py), each mapping a budget (tokens of K/V
# kept; KV-Direct's window) to a policy, keyed by the policy's name.
BASELINES: dict[str, Callable[[int], CachePolicy]] = registry.baselines()
KVDIRECT_MODES: dict[str, Callable[[int], CachePolicy]] = registry.kvdirect_modes()


@torch.no_grad()
def agreement_table(
    model: TransformerBridge,
    prompts: Sequence[str] | None = None,
    *,
    policies: dict[str, Callable[[int], CachePolicy]] | None = None,
    budgets: Sequence[int] = (16, 32, 64, 128, 256),
    max_new_tokens: int = 32,
    progress: bool = True,
    refs: dict | None = None,
) -> pd.DataFrame:
    """Greedy agreement of each policy with FullKV, per budget and prompt (the claim-5 table).

    token_match / common_prefix compare free-running greedy tokens; kl_mean / kl_max are
    D_KL(FullKV || policy) per step with the policy fed FullKV's tokens (teacher forcing),
    so every step compares the same context, and forced_top1 is the share of those steps
    where the policy's argmax is FullKV's token; logits_bitwise says whether every step's
    logits were the same bits. bytes_held counts what the policy holds after the last step.

    Both runs come from one prefill (`generation.forced_and_free`): the free run forks the
    forced one at the first step where the policy's own greedy choice (argmax) is not the
    forced token, and where there is none it *is* the forced run (free_run_reused says so).

    refs: where the FullKV reference generations are kept, by prompt index (a fresh dict by
    default); a caller running one prompt per call may pass one dict per prompt so its
    reference is generated once for all its (policy, budget) calls.
    """
    prompts = load_data("prompts.json")["prompts"] if prompts is None else list(prompts)
    policies = {**BASELINES, **KVDIRECT_MODES} if policies is None else policies
    jobs = [(p, name, b) for p in range(len(prompts)) for b in budgets for name in policies]
    refs = {} if refs is None else refs
    rows = []
    for p, name, budget in tqdm(jobs, desc="agreement", disable=not progress):
        if p not in refs:
            refs[p] = generate(model, prompts[p], max_new_tokens=max_new_tokens, keep_logits=True)
        ref = refs[p]
        forced, free = forced_and_free(
            model,
            prompts[p],
            max_new_tokens=max_new_tokens,
            cache=policies[name](budget),
            force=ref.new_tokens,
        )
        kl = torch.stack(
            [kl_divergence(a, b) for a, b in zip(ref.logits, forced.logits, strict=True)]
        )
        match = token_match(ref.new_tokens, free.new_tokens)
        # teacher-forced top-1: at each step, on the same context, is the policy's argmax the
        # full cache's token? (one early flip does not score the steps after it)
        top1 = torch.stack([lg.argmax(-1) for lg in forced.logits], -1) == ref.new_tokens
        rows.append(
            {
                "prompt": p,
                "prompt_tokens": ref.tokens.shape[1] - max_new_tokens,
                "policy": name,
                "budget": budget,
                "token_match": match.fraction,
                "common_prefix": match.common_prefix,
                "forced_top1": float(top1.double().mean()),
                "kl_mean": float(kl.mean()),
                "kl_max": float(kl.max()),
                "logits_bitwise": all(
                    torch.equal(a, b) for a, b in zip(ref.logits, forced.logits, strict=True)
                ),
                "bytes_held": held_bytes(free.memory[-1]),
                "fullkv_bytes": held_bytes(ref.memory[-1]),
                "free_run_reused": free is forced,
            }
        )
    return pd.DataFrame(rows)
