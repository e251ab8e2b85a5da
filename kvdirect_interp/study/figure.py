"""The one summary figure the README shows, drawn from the stored tables: per studied model,
claim 4's peak bytes per turn (held + what a step builds and frees) against FullKV's, and
claim 5's token match at equal memory per baseline (95% intervals) beside the paper's
5-28% and KV-Direct's 100%. Written as SVG with a fixed hash salt and no date, so the same
tables give the same file and a test can check the committed one is current."""

from __future__ import annotations

from pathlib import Path

from .. import results
from .report import studied

FIGURE = "docs/summary.svg"  # relative to the checkout: what the README shows


def _claim4(ax, table, name: str) -> None:
    turns = results.claim4_turns(table)
    for (policy, replay), rows in turns.groupby(["policy", turns.replay.fillna("")]):
        rows = rows.sort_values("total_tokens")
        label = policy.removeprefix("KVDirect[").removesuffix("]") + (
            f" ({replay})" if replay else ""
        )
        peak = (rows.held_bytes + rows.transient_bytes) / 1e6
        ax.plot(rows.total_tokens, peak, marker="o", markersize=2, label=label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")  # MB as plain numbers
    ax.yaxis.set_minor_formatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else "")
    ax.set_xlabel("tokens in the 20-turn chat")
    ax.set_ylabel("peak MB (held + transient)")
    ax.set_title(f"{name}: claim 4, peak memory per turn", fontsize=9)
    ax.legend(fontsize=6)


def _claim5(ax, table, facts, name: str) -> None:
    equal = results.claim5_equal_memory(table, facts.shape)
    summ = results.claim5_summary(results.claim5_baselines(equal), group="matched")
    order = sorted(summ.matched.unique(), key=lambda m: (m.split(" w")[0], int(m.split(" w")[1])))
    ax.axhspan(0.05, 0.28, color="0.9", label="the paper's baselines: 5-28%")
    ax.axhline(1.0, color="black", linewidth=1, label="KV-Direct (every row)")
    for i, (policy, rows) in enumerate(summ.groupby("policy")):
        rows = rows.set_index("matched").reindex(order)
        x = [j + (i - 2.5) * 0.1 for j in range(len(order))]
        err = [rows.token_match - rows.token_match_low, rows.token_match_high - rows.token_match]
        ax.errorbar(x, rows.token_match, yerr=err, fmt="o", markersize=3, capsize=2, label=policy)
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("baselines given the bytes this KV-Direct mode and window held")
    ax.set_ylabel("token match with FullKV (mean, 95% CI)")
    ax.set_title(f"{name}: claim 5, token match at equal memory", fontsize=9)
    ax.legend(fontsize=6)


def draw(out: Path | str, path: Path | str, names=None) -> Path:
    """Draw the figure of the studies in `out` (every studied model by default) to `path`
    (SVG). Needs matplotlib (the `figures` extra), imported here: nothing else needs it."""
    import matplotlib  # optional heavy dependency: only the figure needs it

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    names = studied(out) if names is None else list(names)
    matplotlib.rcParams["svg.hashsalt"] = "kvdirect_interp"
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.6 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        facts = results.facts(name, out)
        four, five = (results.planned_table(name, c, out) for c in (4, 5))
        if four is not None:
            _claim4(row[0], four, name)
        if five is not None:
            _claim5(row[1], five, facts, name)
    fig.suptitle("The paper's claims 4 and 5 beside our stored studies (fp32, CPU)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path
