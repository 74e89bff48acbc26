"""Ablations and candidate changes of the built-in model on the real Betfair Iggy files, one seed per variant.

Each variant is the full model minus one input (or with one training change), trained on the same windows:
the early-stopping window's race NLL (the only figure to choose by) and the test window's race NLL (after
it; never used to choose), with the difference to the full model on the same races and the rated price's and
market's race NLL on the races they price. Form only (no current price in the context) unless --market.

Every variant writes one JSON file under --out (so a long series can run one variant per process, each under
`flock /tmp/gruviz-heavy.lock`); `--table` prints the table of the files there.

    .venv/bin/python bench/ablation.py --variants full no_upcoming_grade [--epochs 30] [--out /tmp/gruviz-ablation]
    .venv/bin/python bench/ablation.py --table [--out /tmp/gruviz-ablation]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from flows.stages import features  # noqa: E402
from flows.stages.ingest import ingest  # noqa: E402
from flows.stages.train import snapshot_yardsticks, training_arrays  # noqa: E402
from gruviz_core.features import (  # noqa: E402
    CATEGORICAL,
    MARKET_CONTEXT,
    TRACK_INDEX,
    track_embedding_columns,
)
from gruviz_core.model import ModelConfig  # noqa: E402
from gruviz_core.sequences import Sequences  # noqa: E402
from gruviz_core.train import TrainConfig, train_seed, window_report  # noqa: E402
from storage.sequences import load_sequences  # noqa: E402

IGGY = Path(__file__).resolve().parents[2] / "shared" / "data" / "betfair-iggy"
GRADE_CONTEXT = ("grade_level", "grade_missing", "grade_change", "grade_change_missing", "kind_")


@dataclass(frozen=True)
class Variant:
    """One variant: columns left out, and changes to the model or the training."""

    doc: str
    """What it changes."""
    drop_values: tuple[str, ...] = ()
    """Prefixes of race-feature columns left out."""
    drop_context: tuple[str, ...] = ()
    """Prefixes of context columns left out."""
    raw_days: bool = False
    """Days since the last run as plain date differences (a gap in the files reads as a long spell)."""
    box_track: bool = True
    """The learned box x track table."""
    source_speed: bool = False
    """Iggy's own pre-race 'Early Speed' rating of each run in the context (bench only: a yardstick of what speed
    data would buy; it cannot be computed from earlier rows, so it is never a candidate input)."""
    model: dict = field(default_factory=dict)
    """ModelConfig overrides."""
    train: dict = field(default_factory=dict)
    """TrainConfig overrides."""


VARIANTS: dict[str, Variant] = {
    "full": Variant("every input"),
    "no_upcoming_grade": Variant("without the upcoming race's grade, kind and class change", drop_context=GRADE_CONTEXT),
    "no_placed": Variant("without the placed flag", drop_values=("placed",)),
    "no_track": Variant("without the track embedding and the box x track table", drop_context=(TRACK_INDEX,)),
    "no_box_track": Variant("track embedding, no box x track table", box_track=False),
    "raw_days": Variant("days since the last run not coverage-aware", raw_days=True),
    "no_form_rates": Variant("without the earlier starts and win rate at the track and distance", drop_context=("form_",)),
    # candidates to close the gap (judged on the early-stopping window only)
    "plateau_0.5": Variant("learning rate halved after each epoch without improvement, patience 4",
                           train={"plateau_factor": 0.5, "patience": 4}),
    "two_layers": Variant("two GRU layers, dropout 0.1 between them", model={"num_layers": 2, "dropout": 0.1}),
    "place_0.5": Variant("top-2 Plackett-Luce term, weight 0.5", train={"place_weight": 0.5}),
    "place_1": Variant("top-2 Plackett-Luce term, weight 1", train={"place_weight": 1.0}),
    "hidden_32": Variant("32 GRU units", model={"hidden_size": 32}),
    "hidden_128": Variant("128 GRU units", model={"hidden_size": 128}),
    "head_64": Variant("head of 64 units", model={"head_hidden": 64}),
    "lr_1e-3": Variant("learning rate 1e-3", train={"lr": 1e-3}),
    "wd_1e-4": Variant("weight decay 1e-4", train={"weight_decay": 1e-4}),
    "source_speed": Variant("plus Iggy's pre-race Early Speed rating (NOT an input: computed by the source's model "
                            "from sectionals the files do not carry)", source_speed=True),
    "place_plateau": Variant("top-2 Plackett-Luce term (weight 0.5) and the halving learning rate, patience 4",
                             train={"place_weight": 0.5, "plateau_factor": 0.5, "patience": 4}),
}


def raw_days(seqs: Sequences) -> Sequences:
    """The same sequences with days since the last run as plain date differences (first run unknown)."""
    d = seqs.race_date.astype("datetime64[D]").astype(np.int64).astype(np.float64)
    first = np.zeros(seqs.n_obs, dtype=bool)
    first[seqs.offsets[:-1]] = True
    log_days = np.where(first, np.nan, np.log1p(np.clip(np.diff(d, prepend=np.nan), 0.0, None)))
    values, context = seqs.values.copy(), seqs.context.copy()
    for arr, names in ((values, seqs.feature_names), (context, seqs.context_names)):
        arr[:, names.index("log_days_since")] = log_days
        arr[:, names.index("days_missing")] = (~np.isfinite(log_days)).astype(np.float32)
    return replace(seqs, values=values, context=context)


def with_source_speed(seqs: Sequences, source: Path) -> Sequences:
    """The sequences with Iggy's 'Early Speed' of each run (and a missing flag) added to the context, joined on
    the race (bf:MarketId) and the dog's key, as the Iggy adapter forms them."""
    import pandas as pd

    from gruviz_core.formats import normalise_name

    cols = ["MarketId", "Dog", "Early Speed"]
    raw = pd.concat([pd.read_csv(f, usecols=lambda c: c in cols, dtype={"MarketId": str}).reindex(columns=cols)
                     for f in sorted(source.glob("*.csv.gz"))], ignore_index=True)  # the first (V1) file has none
    key = "bf:" + raw["MarketId"].str.strip() + "|" + normalise_name(raw["Dog"])
    speed = pd.to_numeric(raw["Early Speed"], errors="coerce").groupby(key).first()
    dog = np.repeat(seqs.dog_id, np.diff(seqs.offsets))
    got = speed.reindex(pd.Index(seqs.race_id.astype(str)) + "|" + pd.Index(dog.astype(str))).to_numpy(np.float32)
    extra = np.stack([np.nan_to_num(got, nan=0.0), np.isnan(got).astype(np.float32)], axis=1)
    print(json.dumps({"source_speed_rows": int(np.isfinite(got).sum()), "rows": len(got)}), file=sys.stderr)
    return replace(seqs, context=np.concatenate([seqs.context, extra], axis=1),
                   context_names=(*seqs.context_names, "src_early_speed", "src_early_speed_missing"))


def run_variant(name: str, seqs: Sequences, sticks: dict, *, market: bool, epochs: int, hidden: int, seed: int) -> dict:
    v = VARIANTS[name]
    cfg = replace(TrainConfig(threads=1, epochs=epochs), **v.train)
    src = raw_days(seqs) if v.raw_days else seqs
    src = with_source_speed(src, IGGY) if v.source_speed else src
    ctx = [n for n in src.context_names if (market or n not in MARKET_CONTEXT) and not n.startswith(v.drop_context or ("\0",))]
    feats = [n for n in src.feature_names if not n.startswith(v.drop_values or ("\0",))]
    data, norm, cutoff, es_end = training_arrays(src, cfg.val_frac, cfg.test_frac, ctx, feats)
    col, box = track_embedding_columns(norm.context_names)
    mcfg = ModelConfig(len(feats), len(ctx), hidden_size=hidden, seed=seed, context_skip=True,
                       box_columns=box if v.box_track else (), track_column=col,
                       n_tracks=CATEGORICAL[TRACK_INDEX] if col >= 0 else 0)
    mcfg = replace(mcfg, **v.model)
    t0 = time.perf_counter()
    r = train_seed(data, mcfg, cfg)
    test = window_report({str(seed): r.scores}, data, data.test_rows, sticks)
    pick = lambda m: {"race_nll": round(m["race_log_loss"], 4), "n_races": m["n_races"]}  # noqa: E731
    return {
        "variant": name, "doc": v.doc, "market_in_context": market, "epochs_max": epochs, "epochs": len(r.curve),
        "best_epoch": r.best_epoch, "epoch_s": round(float(r.curve["seconds"].mean()), 2),
        "seconds": round(time.perf_counter() - t0, 1), "cutoff": str(cutoff), "early_stop_end": str(es_end),
        "n_context": len(ctx), "n_features": len(feats),
        "es_race_nll": round(float(r.curve["val_loss"].min()), 5),
        "es_win_race_nll": round(r.metrics["model"]["race_log_loss"], 5),  # -log p(winner), as bench/train.py prints
        "test_race_nll": round(test["ensemble"]["race_log_loss"], 5), "test_races": test["ensemble"]["n_races"],
        "vs": {k: {"baseline": pick(b["baseline"]), "model": pick(b["model"]),
                   "diff": round(b["diff"]["race_log_loss"], 4)} for k, b in test["vs"].items()},
    }


def table(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    full = next((r for r in rows if r["variant"] == "full"), None)
    lines = ["| variant | epochs (best) | s/epoch | ES race NLL | ES diff vs full | test race NLL | test diff vs full "
             "| test diff vs rated price | test diff vs market |", "|" + "---|" * 9]
    order = {k: i for i, k in enumerate(VARIANTS)}
    for r in sorted(rows, key=lambda r: order.get(r["variant"], 99)):
        d = lambda k, r=r: (f"{r[k] - full[k]:+.4f}" if full else "")  # noqa: E731
        vs = lambda k, r=r: (f"{r['vs'][k]['diff']:+.4f}" if k in r["vs"] else "")  # noqa: E731
        lines.append(f"| {r['variant']} | {r['epochs']} ({r['best_epoch']}) | {r['epoch_s']} | {r['es_race_nll']:.4f} "
                     f"| {d('es_race_nll')} | {r['test_race_nll']:.4f} | {d('test_race_nll')} | {vs('rated_price')} "
                     f"| {vs('market')} |")
    if full:
        lines.append("")
        lines.append("Baselines on the test window (same races as the model row): "
                     + "; ".join(f"{k} {v['baseline']['race_nll']:.4f} over {v['baseline']['n_races']} races"
                                 for k, v in full["vs"].items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=["full"], choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--market", action="store_true", help="the current price in the context (default: form only)")
    ap.add_argument("--dir", default="/tmp/gruviz-bench-train")
    ap.add_argument("--source", default=str(IGGY))
    ap.add_argument("--snapshot", default=None, help="a snapshot already ingested into --dir (default: ingest)")
    ap.add_argument("--out", default="/tmp/gruviz-ablation")
    ap.add_argument("--table", action="store_true", help="print the table of the results under --out and exit")
    a = ap.parse_args()
    out = Path(a.out)
    if a.table:
        print(table(out))
        return 0
    if not any(Path(a.source).glob("*.csv.gz")):
        print(json.dumps({"skipped": f"no Iggy files at {a.source}"}))
        return 0
    snap = a.snapshot or ingest([a.source], a.dir).snapshot_id
    seqs = load_sequences(features.run(a.dir, snap))
    sticks = snapshot_yardsticks(a.dir, snap, seqs.n_obs)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.variants:
        res = run_variant(name, seqs, sticks, market=a.market, epochs=a.epochs, hidden=a.hidden, seed=a.seed)
        res["snapshot_id"] = snap
        (out / f"{name}.json").write_text(json.dumps(res))
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
