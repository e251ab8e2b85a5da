"""One unit measured: its settings handed to the measurement function the notebooks and
`verify` use (experiments.py, kv.reconstruction_report), its table turned into small
JSON-ready rows. No measurement logic lives here; only the choice of inputs."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import experiments as ex
from ..kv import reconstruction_report
from ..policies import registry
from ..resources import load_data
from ..sampling import GREEDY, Sampling
from ..tokens import to_tokens
from .provenance import provenance
from .store import records
from .units import Unit

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# where and from what each part of a resumed chat ran: claim 4's rows carry them per turn
PART_INFO = ("date_utc", "cpu", "torch_threads", "git_commit", "git_dirty")


@dataclass
class Context:
    """What units share in one process: the model per dtype (loaded on first use), a
    scratch folder on the results' disk (claim 6's file reads), the FullKV reference
    of the last claim-5 prompt (its units come prompt-major, so it is made once), and
    whether the long units (claim 4's chats, claim 6's decode runs) show inner progress bars.
    `partial`: where a unit that runs for hours (claim 4's chats) keeps its state between
    steps (a session snapshot per turn), so a stopped run resumes inside the unit; run.py
    deletes a unit's snapshot once its record is written."""

    load: Callable[[str], object]  # dtype name -> model
    scratch: Path
    partial: Path | None = None
    progress: bool = True
    _models: dict = field(default_factory=dict)
    _refs: tuple = (None, None)

    def model(self, dtype: str = "float32"):
        if dtype not in self._models:
            self._models[dtype] = self.load(dtype)
        return self._models[dtype]

    def release(self, keep: str = "float32") -> None:
        """Drop every model but `keep`'s and claim 5's reference: run before each claim, so
        claim 4's peak RSS per turn holds one model, not what earlier claims loaded."""
        self._models = {k: m for k, m in self._models.items() if k == keep}
        self._refs = (None, None)
        gc.collect()

    def snapshot(self, unit: Unit) -> Path | None:
        """The file of `unit`'s saved state, inside the unit (None: units start over)."""
        if self.partial is None:
            return None
        return self.partial / f"claim{unit.claim}-{unit.key.rsplit('/', 1)[1]}.session"

    def refs_for(self, prompt_key) -> dict:
        if self._refs[0] != prompt_key:
            self._refs = (prompt_key, {})  # drop the last prompt's logits: they are large
        return self._refs[1]


# where a claim-5 unit's prompt comes from: its `source` setting (units without one: the
# long prompts of 256-1,021 tokens)
SOURCES = {"long_prompts": "long_prompts.json", "long_context": "long_context.json"}


def long_prompt(model, index: int, n_tokens: int, source: str = "long_prompts") -> torch.Tensor:
    """Tokens [1, n_tokens]: text `index` of the `source` set (SOURCES), cut to exactly
    n_tokens (the texts are written to be long enough for the plan's lengths; a shorter one
    is refused, never padded or repeated)."""
    if source not in SOURCES:
        raise ValueError(f"unknown prompt source {source!r}; accepted: {list(SOURCES)}")
    texts = load_data(SOURCES[source])["texts"]
    if not 0 <= index < len(texts):
        raise ValueError(f"long prompt {index} does not exist; accepted: 0..{len(texts) - 1}")
    if source == "long_context":
        # the text up to the first paragraph end past n_tokens: the whole text can exceed a
        # small model's context (to_tokens refuses it); a cut at a paragraph end keeps the
        # tokens before it
        text = ""
        for para in texts[index].split("\n\n"):
            text = f"{text}\n\n{para}" if text else para
            toks = to_tokens(model, text)
            if toks.shape[1] >= n_tokens:
                break
    else:
        toks = to_tokens(model, texts[index])
    if toks.shape[1] < n_tokens:
        raise ValueError(
            f"long prompt {index} has {toks.shape[1]} tokens on this model; the unit needs "
            f"{n_tokens}: give it a longer text or a shorter unit"
        )
    return toks[:, :n_tokens]


def claim1(unit: Unit, ctx: Context) -> list[dict]:
    s = unit.settings
    model = ctx.model(s["dtype"])
    report = reconstruction_report(
        model, long_prompt(model, s["prompt"], s["tokens"]), shapes=s["shapes"]
    )
    return records(report.assign(prompt=s["prompt"], tokens=s["tokens"]))


def _task_prompt(ref: list) -> str:
    task, i = ref
    return load_data("tasks.json")["tasks"][task][i]


def claim2(unit: Unit, ctx: Context) -> list[dict]:
    s = unit.settings
    model = ctx.model()
    clean, donor = (to_tokens(model, _task_prompt(s[k])) for k in ("clean", "donor"))
    n = min(clean.shape[1], donor.shape[1])  # patching needs equal shapes
    label = f"{'/'.join(map(str, s['clean']))} <- {'/'.join(map(str, s['donor']))}"
    kl = ex.patching_kl(model, [(label, clean[:, :n], donor[:, :n])], site=s["site"])
    return records(
        kl.assign(
            site=s["site"], tokens=n, clean_tokens=clean.shape[1], donor_tokens=donor.shape[1]
        )
    )


def _claim3_prompt(ref: list):
    kind, i = ref
    if kind == "prompts":
        return load_data("prompts.json")["prompts"][i]
    return [{"role": "user", "content": load_data("chat_20_turns.json")["turns"][i]}]


def claim3(unit: Unit, ctx: Context) -> list[dict]:
    s = unit.settings
    sampling = GREEDY if s["sampling"] == "greedy" else Sampling(do_sample=True, seed=s["seed"])
    runs = ex.no_cache_runs(
        ctx.model(),
        [_claim3_prompt(s["prompt"])],
        samplings={s["sampling"]: sampling},
        max_new_tokens=s["new_tokens"],
    )
    # the per-step lists (drift, margin, equal: new_tokens scalars each) are kept: small
    runs = runs.drop(columns=["run", "prompt"]).assign(
        prompt="/".join(map(str, s["prompt"])), seed=s["seed"]
    )
    return records(runs)


def claim4(unit: Unit, ctx: Context) -> list[dict]:
    s = unit.settings
    turns = load_data("chat_20_turns.json")["turns"][: s["turns"]]
    policy = registry.make(s["policy"], s["window"])
    if "exact_shapes" in s:  # KV-Direct's replay modes in the full plan (plan.py says why)
        policy = replace(policy, exact_shapes=s["exact_shapes"])
    replay = None  # the replay variant, for the re-prefill modes only
    if policy.name in registry.replay_modes():  # units without the key ran one-shot
        replay = s.get("replay", "one_shot")
        policy = replace(policy, replay=replay)
    df = ex.run_chat(
        ctx.model(),
        policy,
        turns=turns,
        max_new_tokens=s["max_new_tokens"],
        progress=ctx.progress,  # a turn bar under the unit bar: a replay mode's unit takes ~1 h
        per_step=True,
        snapshot=ctx.snapshot(unit),  # a replay mode's chat is hours on Qwen: resume inside it
        part_info={k: v for k, v in provenance(ctx.model()).items() if k in PART_INFO},
    )
    return records(
        df.assign(
            window=s["window"],
            exact_shapes=s.get("exact_shapes", True),
            replay=replay,
        )
    )


def claim5(unit: Unit, ctx: Context) -> list[dict]:
    s = unit.settings
    model = ctx.model()
    df = ex.agreement_table(
        model,
        [long_prompt(model, s["prompt"], s["tokens"], s.get("source", "long_prompts"))],
        policies={s["policy"]: registry.POLICIES[s["policy"]]},
        budgets=[s["budget"]],
        max_new_tokens=s["new_tokens"],
        progress=False,
        refs=ctx.refs_for((s.get("source"), s["prompt"], s["tokens"], s["new_tokens"])),
    )
    return records(df.assign(prompt=s["prompt"], source=s.get("source", "long_prompts")))


def claim6(unit: Unit, ctx: Context) -> list[dict]:
    s = unit.settings
    if s.get("measure") == "decode":
        model = ctx.model()
        policies = [registry.make(name, s["budget"]) for name in s["policies"]]
        # the prompt leaves room for the new tokens: the last step runs at `context` tokens
        prompt = long_prompt(model, s["prompt"], s["context"] - s["new_tokens"])
        df = ex.decode_side_by_side(
            model,
            policies,
            prompt,
            new_tokens=s["new_tokens"],
            rounds=s["rounds"],
            progress=ctx.progress,
        )
        return records(df.assign(measure="decode", budget=s["budget"]))
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    df = ex.rebuild_vs_read(
        ctx.model(),
        layer=s["layer"],
        n_tokens=[s["tokens"]],
        batch_sizes=[s["batch"]],
        repeats=s["repeats"],
        disk_dir=ctx.scratch if s["disk"] else None,
    )
    return records(df.assign(layer=s["layer"], measure="rebuild_vs_read"))


MEASURE: dict[int, Callable[[Unit, Context], list[dict]]] = {
    1: claim1,
    2: claim2,
    3: claim3,
    4: claim4,
    5: claim5,
    6: claim6,
}
