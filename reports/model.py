"""The nightly report as plain data: `build_report(run_dir, ...) -> ReportModel`.

Built only from a run's tables (docs/ARCHITECTURE.md sections 3-4). Everything the page shows is
here, already aggregated and rounded (4 significant digits): sections of panels, each panel a
figure spec (plain data that `reports.figures` draws), a table (rows of cells) or a "not computed"
note. Nothing per dog is kept except the two heatmap dogs, so the page size does not grow with
the number of dogs. Rendering (`reports.render`) only reads this model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from gruviz_core.errors import NotFoundError

__all__ = [
    "ReportModel",
    "Section",
    "Panel",
    "Table",
    "FigureSpec",
    "HeadlineNumber",
    "build_report",
    "sig",
    "COHORT_ORDER",
    "COHORT_COLOURS",
    "MAX_FRAMES",
    "GLOSSARY",
]

COHORT_ORDER: tuple[str, ...] = ("all", "saturated", "partial", "unsaturated", "undecided")
COHORT_COLOURS: Mapping[str, str] = {
    "all": "#4b5563",
    "saturated": "#c2410c",
    "partial": "#a16207",
    "unsaturated": "#1d4ed8",
    "undecided": "#6b7280",
}
SOURCE_COLOURS: Mapping[str, str] = {
    "model": "#0f766e",
    "model_mean": "#14b8a6",
    "market": "#7c3aed",
    "uniform": "#9ca3af",
}
MAX_FRAMES = 100
"""Most animation frames of the state heatmap; longer careers are sampled."""
MAX_HEATMAP_STEPS = 300
"""Most steps drawn in a dog's heatmap; longer careers are sampled evenly."""
MIN_BAND_DOGS = 10
"""A cohort band is drawn at a step only where at least this many dogs reach it."""

GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "Magnitude saturation",
        "Hidden units pinned near the tanh boundary (|h| close to 1). Measured by s = mean |h| "
        "(the abs-sum divided by the number of units) and F_tau, the share of units with |h| >= tau. "
        "A saturated state changes little from race to race: new form barely moves it.",
    ),
    (
        "Gate saturation",
        "Update (z) and reset (r) gates stuck near 0 or 1 (Karpathy, Johnson and Fei-Fei, 2015): the share of "
        "steps a gate unit spends below 0.1 (left) or above 0.9 (right). In PyTorch z near 1 means "
        "'keep the old state', so right-saturated z units ignore new races.",
    ),
    (
        "Spectral saturation",
        "The state uses few directions: the effective dimension (participation ratio of the state covariance) "
        "is small compared with the number of units, even if no single unit is pinned.",
    ),
    (
        "Plateau step T*",
        "The first race from which s stops changing (relative change over w races below delta for k races). "
        "Dogs with too few races to tell are 'undecided' (right-censored), not 'unsaturated'.",
    ),
    (
        "Cohorts",
        "saturated: a plateau exists and the mean F_0.95 after it reaches theta; unsaturated: F stays low; "
        "partial: in between; undecided: too few races. The rule and its parameters are in the header.",
    ),
)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class FigureSpec:
    """One figure as plain data; `reports.figures.figure(spec)` draws it."""

    kind: str
    """Which drawer in reports.figures: anim_heatmap, heatmap, bands, lines, scatter, grouped."""
    div_id: str
    """Fixed id of the figure's div (Plotly would pick a random one: the page must be deterministic)."""
    data: Mapping[str, Any]
    """Lists, numbers and strings only; already rounded."""
    height: int = 380
    """Height in pixels."""


@dataclass(frozen=True)
class Table:
    """A small table: header and rows of cells (str, int, float or None)."""

    columns: tuple[str, ...]
    """Header cells."""
    rows: tuple[tuple[Any, ...], ...]
    """One tuple per row, aligned with columns."""


@dataclass(frozen=True)
class Panel:
    """One figure or table with a title, what it shows and how to read it; or a 'not computed' note."""

    title: str
    """Short heading."""
    explain: str
    """What it shows and how to read it, in a sentence or two."""
    figure: FigureSpec | None = None
    """The figure, if any."""
    table: Table | None = None
    """The table, if any."""
    note: str | None = None
    """Shown instead when the input was not computed for this run (names the missing table)."""
    collapsed: bool = False
    """Render the table inside a closed <details> (long tables)."""


@dataclass(frozen=True)
class Section:
    """A titled part of the page."""

    id: str
    """Anchor id (stable)."""
    title: str
    """Heading."""
    intro: str
    """One or two sentences: the question this section answers."""
    panels: tuple[Panel, ...]
    """Figures and tables, in order."""


@dataclass(frozen=True)
class HeadlineNumber:
    """One number of the header, with its change since the previous night."""

    key: str
    """Key in eval/headline.json."""
    label: str
    """What it is, in words."""
    value: float | int | None
    """Tonight's value."""
    text: str
    """Tonight's value, formatted."""
    delta_text: str | None
    """Change since the previous night, formatted with its sign; None without a previous night."""
    tone: str
    """'good', 'bad' or 'neutral': colour of the change (lower log-loss is good)."""


@dataclass(frozen=True)
class ReportModel:
    """Everything the nightly page shows."""

    title: str
    """Page title."""
    night: str
    """The night (YYYY-MM-DD) this report is for."""
    verdict: str
    """Plain-language answer to 'does saturation matter tonight?'."""
    headline: tuple[HeadlineNumber, ...]
    """The numbers at the top."""
    cohort_counts: tuple[tuple[str, int], ...]
    """(cohort, dogs) in display order."""
    provenance: tuple[tuple[str, str], ...]
    """(label, value): date, snapshot, model set, seeds, code version, device, cohort rule, ..."""
    previous_night: str | None
    """The night the changes are measured against."""
    sections: tuple[Section, ...]
    """The body, in order."""
    glossary: tuple[tuple[str, str], ...] = field(default=GLOSSARY)
    """(term, definition)."""


# ---------------------------------------------------------------- helpers


def sig(x: Any, digits: int = 4) -> float | None:
    """x rounded to `digits` significant digits as a short float; None for NaN/None/inf."""
    if x is None or x is pd.NA:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _sigs(values: Iterable[Any], digits: int = 4) -> list[float | None]:
    return [sig(v, digits) for v in values]


def _ints(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in values]


class _Run:
    """Reads a run directory's tables once; a missing one is None (its section says 'not computed')."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self._cache: dict[str, pd.DataFrame | None] = {}

    def table(self, rel: str, columns: Sequence[str] | None = None, filters=None) -> pd.DataFrame | None:
        key = f"{rel}|{columns}|{filters}"
        if key not in self._cache:
            path = self.dir / rel
            if not path.is_file():
                self._cache[key] = None
            else:
                df = pd.read_parquet(path, columns=list(columns) if columns else None, filters=filters)
                self._cache[key] = df
        return self._cache[key]

    def json(self, rel: str) -> dict | None:
        return _read_json(self.dir / rel)


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _missing(rel: str) -> str:
    return f"Not computed for this run: {rel} is missing."


def _has(df: pd.DataFrame | None, *cols: str) -> bool:
    return df is not None and len(df) > 0 and all(c in df.columns for c in cols)


def _cohorts_in(values: Iterable[str]) -> list[str]:
    present = set(values)
    known = [c for c in COHORT_ORDER if c in present]
    return known + sorted(present - set(known))


def _colour(cohort: str) -> str:
    return COHORT_COLOURS.get(cohort, "#374151")


def _by_layer(df: pd.DataFrame | None, layer: int) -> pd.DataFrame | None:
    if df is None or "layer" not in df.columns:
        return df
    return df[df["layer"] == layer]


# ---------------------------------------------------------------- headline and verdict

_HEADLINE_KEYS: tuple[tuple[str, str, str, str], ...] = (
    # key, label, format, which direction is good
    ("dogs", "Dogs", "int", "neutral"),
    ("obs", "Races (dog-steps)", "int", "neutral"),
    ("saturated_share", "Saturated share", "pct", "neutral"),
    ("median_plateau_step", "Median plateau race", "num", "neutral"),
    ("model_log_loss", "Model log-loss", "num", "lower"),
    ("market_log_loss", "Market log-loss", "num", "lower"),
    ("uniform_log_loss", "Uniform log-loss", "num", "lower"),
)


def _exact(x: Any) -> float | None:
    v = sig(x, 17)
    return None if v is None else float(round(v))


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "n/a"
    if kind == "int":
        return f"{int(round(float(v))):,}"
    if kind == "pct":
        return f"{100 * float(v):.1f}%"
    return f"{float(v):.4g}"


def _fmt_delta(d: float, kind: str) -> str:
    if kind == "int":
        return f"{int(round(d)):+,}"
    if kind == "pct":
        return f"{100 * d:+.1f} pts"
    return f"{d:+.3g}"


def _headline_numbers(head: dict, prev: dict | None) -> tuple[HeadlineNumber, ...]:
    out = []
    for key, label, kind, good in _HEADLINE_KEYS:
        if key not in head:
            continue
        exact = kind == "int"  # counts are shown exactly, never rounded to significant digits
        v = _exact(head.get(key)) if exact else sig(head.get(key))
        delta_text, tone = None, "neutral"
        pv = (_exact(prev.get(key)) if exact else sig(prev.get(key))) if prev else None
        if v is not None and pv is not None:
            d = v - pv
            delta_text = _fmt_delta(d, kind)
            if good == "lower" and abs(d) > 1e-12:
                tone = "good" if d < 0 else "bad"
        out.append(HeadlineNumber(key, label, v, _fmt(v, kind), delta_text, tone))
    return tuple(out)


def _cohort_counts(head: dict, summary: dict | None, dog: pd.DataFrame | None) -> tuple[tuple[str, int], ...]:
    counts = head.get("cohort_counts") or head.get("cohorts") or (summary or {}).get("cohort_counts")
    if not isinstance(counts, dict) and _has(dog, "cohort"):
        counts = dog["cohort"].value_counts().to_dict()
    if not isinstance(counts, dict):
        return ()
    return tuple((c, int(counts[c])) for c in _cohorts_in(counts) if c != "all")


def _effect_row(effect: pd.DataFrame | None, adjust: str, metric: str = "log_loss") -> dict | None:
    """The `metric` effect row (a - b) with finite diff/lo/hi, for `adjust` ('none' or 'length_matched')."""
    if not _has(effect, "metric", "diff", "lo", "hi"):
        return None
    ll = effect[effect["metric"] == metric]
    if "adjust" in ll.columns:
        ll = ll[ll["adjust"].fillna("none") == adjust]
    elif adjust != "none":
        return None
    for _, r in ll.iterrows():
        vals = [sig(r[k]) for k in ("diff", "lo", "hi")]
        if all(v is not None for v in vals):
            return {
                "a": str(r.get("a", "saturated")),
                "b": str(r.get("b", "unsaturated")),
                "diff": vals[0],
                "lo": vals[1],
                "hi": vals[2],
            }
    return None


def _verdict(
    head: dict,
    counts: dict[str, int],
    median_plateau: float | None,
    effect: pd.DataFrame | None,
    lm: pd.DataFrame | None,
) -> str:
    """One paragraph: how many dogs saturate, whether it changes prediction (with its interval), model vs market."""
    parts = []
    dogs = head.get("dogs") or sum(counts.values())
    share = sig(head.get("saturated_share"))
    if share is None and dogs:
        share = counts.get("saturated", 0) / dogs
    if share is not None and dogs:
        pct = 100 * float(share)
        s = f"{pct:.1f}% of {int(dogs):,} dogs" if 0 < pct < 10 else f"{pct:.0f}% of {int(dogs):,} dogs"
        s += " have saturated hidden states"
        if median_plateau is not None:
            s += f" (median plateau at race {median_plateau:.0f})"
        parts.append(s + ".")
    # Against the market on the same races when there is one: raw log-loss mostly tracks how often a
    # cohort's dogs win (saturated dogs win more), the gap to the market tracks how well they are modelled.
    metric = "log_loss_vs_market" if _effect_row(effect, "none", "log_loss_vs_market") else "log_loss"
    what = "the model's log-loss gap to the market" if metric == "log_loss_vs_market" else "log-loss"
    row = _effect_row(effect, "none", metric)
    if row is not None:
        a, b, diff, lo, hi = row["a"], row["b"], row["diff"], row["lo"], row["hi"]
        ci = f"95% interval {lo:+.3g} to {hi:+.3g}"
        if hi < 0:
            parts.append(f"It matters: {a} dogs are predicted better, {what} {abs(diff):.3g} lower than for {b} dogs ({ci}).")
        elif lo > 0:
            parts.append(f"It matters: {a} dogs are predicted worse, {what} {abs(diff):.3g} higher than for {b} dogs ({ci}).")
        else:
            parts.append(f"No clear difference in {what} between {a} and {b} dogs ({ci}).")
        adj = _effect_row(effect, "length_matched", metric)
        if adj is not None:
            clear = adj["hi"] < 0 or adj["lo"] > 0
            parts.append(
                f"At equal history length the difference is {adj['diff']:+.3g} ({adj['lo']:+.3g} to {adj['hi']:+.3g}): "
                + (
                    "it is about the state, not just career length."
                    if clear
                    else "not clear once career length is matched."
                )
            )
        else:
            held = _length_matched_agreement(lm, a, b, diff)
            if held:
                parts.append(held)
    elif effect is not None:
        parts.append("Saturated and unsaturated dogs could not be compared tonight (one cohort is empty or too small).")
    else:
        parts.append("Cohort comparison not computed for this run.")
    m, k = sig(head.get("model_log_loss")), sig(head.get("market_log_loss"))
    if m is not None and k is not None:
        word = "beats" if m < k else "trails"
        parts.append(f"The model {word} the market: log-loss {m:.4g} vs {k:.4g}.")
    return " ".join(parts)


def _length_matched_agreement(lm: pd.DataFrame | None, a: str, b: str, diff: float) -> str | None:
    if not _has(lm, "stratum", "cohort", "metric", "value"):
        return None
    ll = lm[lm["metric"] == "log_loss"].pivot_table(index="stratum", columns="cohort", values="value", aggfunc="first")
    if a not in ll.columns or b not in ll.columns:
        return None
    d = (ll[a] - ll[b]).dropna()
    if not len(d):
        return None
    same = int((np.sign(d) == np.sign(diff)).sum())
    return f"At equal history length the gap points the same way in {same} of {len(d)} strata."


# ---------------------------------------------------------------- history


def _night_of(path: Path) -> tuple[str | None, dict | None]:
    head = _read_json(path / "eval" / "headline.json") or _read_json(path / "headline.json")
    run = _read_json(path / "run.json") or {}
    night = (head or {}).get("night") or run.get("night")
    if not night and re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.name):
        night = path.name  # a published report directory <reports>/<night>/headline.json
    return (str(night) if night else None), head


def _history(history: Iterable[Path], night: str) -> list[tuple[str, dict]]:
    """(night, headline) of earlier nights, oldest first; later or same nights are ignored."""
    out: dict[str, dict] = {}
    for p in history:
        n, head = _night_of(Path(p))
        if n and head is not None and n < night:
            out[n] = head
    return sorted(out.items())


# ---------------------------------------------------------------- sections


def _states_section(
    run: _Run, dog: pd.DataFrame | None, watchlist: Sequence[str], loader, loader_note: str | None
) -> Section:
    intro = (
        "What the model's memory looks like inside two dogs: every hidden unit (rows) after every race (columns). "
        "Red is near +1, blue near -1, white near 0; a dog whose columns turn solid red/blue has saturated."
    )
    if dog is None:
        return Section(
            "states", "Hidden states of two dogs", intro, (Panel("Heatmaps", "", note=_missing("stats/dog.parquet")),)
        )
    chosen, how = _choose_dogs(dog, watchlist)
    if loader is None:
        note = loader_note or "Not computed for this run: the states store could not be opened."
        return Section("states", "Hidden states of two dogs", intro, (Panel("Heatmaps", "", note=note),))
    dogs = []
    problems = []
    for row in chosen:
        try:
            st = loader(str(row["dog_id"]), seed=0)
        except Exception as exc:  # a dog missing from the store must not sink the report
            problems.append(f"{row['dog_id']}: {type(exc).__name__}: {exc}")
            continue
        dogs.append(_dog_heat(st, row))
    if not dogs:
        return Section(
            "states",
            "Hidden states of two dogs",
            intro,
            (Panel("Heatmaps", "", note="States could not be read: " + "; ".join(problems)),),
        )
    n_layers = max(d["n_layers"] for d in dogs)
    t_max = max(d["n_steps"] for d in dogs)
    frames = _frame_steps(t_max)
    names = ", ".join(f"{d['name']} ({d['cohort']})" for d in dogs)
    panels = [
        Panel(
            "Animated: the state race by race",
            f"{how} Press Play to watch the top layer fill in race by race (the veiled part is still to come), "
            "or drag the slider to a race. One colour scale (-1 to +1) for every frame, so colours compare across frames and dogs.",
            FigureSpec(
                "anim_heatmap", "fig-states-anim", {"dogs": dogs, "frames": frames, "layer": n_layers - 1}, height=460
            ),
        ),
        Panel(
            "Static: races x units, every layer",
            "The same states, all races at once, one row of panels per layer. Look for the race from which a dog's "
            "columns stop changing: that is its plateau (dashed line).",
            FigureSpec(
                "heatmap", "fig-states-static", {"dogs": dogs, "n_layers": n_layers}, height=max(320, 260 * n_layers)
            ),
        ),
    ]
    if problems:
        panels.append(Panel("Dogs not shown", "", note="Could not read: " + "; ".join(problems)))
    return Section("states", f"Hidden states of two dogs: {names}", intro, tuple(panels))


def _choose_dogs(dog: pd.DataFrame, watchlist: Sequence[str]) -> tuple[list[dict], str]:
    """Watchlist dogs (by id or name) first, then the most and least saturated exemplars; two at most."""
    top = dog.sort_values("dog_index" if "dog_index" in dog.columns else "dog_id", kind="stable")
    picked: list[dict] = []
    for w in watchlist:
        hit = top[
            (top["dog_id"].astype(str) == str(w)) | (top["dog_name"].astype(str).str.casefold() == str(w).casefold())
        ]
        for _, r in hit.head(1).iterrows():
            if r["dog_id"] not in [p["dog_id"] for p in picked]:
                picked.append(r.to_dict())
        if len(picked) == 2:
            return picked, "Dogs from the configured watchlist."
    how = "Dogs from the watchlist, then" if picked else "No watchlist configured, so:"
    how += " the most saturated dog (left) and the least saturated dog (right) with enough races to tell."
    for _, r in _exemplars(top):
        if len(picked) == 2:
            break
        if r["dog_id"] not in [p["dog_id"] for p in picked]:
            picked.append(r.to_dict())
    return picked, how


def _exemplars(top: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """The most saturated dog (saturated cohort first) and the least saturated one (unsaturated first), distinct.

    Ranked by mean F_0.95 after the plateau, then final s, then mean s (ties are common: F is often 0)."""
    long = top[top["n_steps"] >= min(10, int(top["n_steps"].max()))].copy()
    keys = [k for k in ("mean_f095_after", "final_s", "mean_s") if k in long.columns]
    for k in keys:
        long[k] = pd.to_numeric(long[k], errors="coerce").fillna(-1.0)
    cohort = long["cohort"] if "cohort" in long.columns else pd.Series("", index=long.index)
    hi = long.assign(_pool=(cohort != "saturated").astype(int)).sort_values(
        ["_pool", *keys], ascending=[True] + [False] * len(keys), kind="stable"
    )
    lo = long.assign(_pool=(cohort != "unsaturated").astype(int)).sort_values(
        ["_pool", *keys], ascending=[True] + [True] * len(keys), kind="stable"
    )
    out = []
    if len(hi):
        out.append(("most", hi.iloc[0].drop("_pool")))
        rest = lo[lo["dog_id"] != hi.iloc[0]["dog_id"]]
        if len(rest):
            out.append(("least", rest.iloc[0].drop("_pool")))
    return out


def _frame_steps(t_max: int) -> list[int]:
    """At most MAX_FRAMES steps 1..t_max, evenly sampled, always including the last."""
    if t_max <= MAX_FRAMES:
        return list(range(1, t_max + 1))
    return sorted(set(np.round(np.linspace(1, t_max, MAX_FRAMES)).astype(int).tolist()))


def _dog_heat(st: Any, row: dict) -> dict:
    """One dog's states as plain lists for the heatmaps: per layer (unit, step) with 3 decimals."""
    h = np.asarray(st.h, dtype=np.float32)  # (T, L, H)
    t = h.shape[0]
    idx = (
        np.arange(t)
        if t <= MAX_HEATMAP_STEPS
        else np.unique(np.round(np.linspace(0, t - 1, MAX_HEATMAP_STEPS)).astype(int))
    )
    layers = []
    for layer in range(h.shape[1]):
        m = np.round(h[idx, layer, :].T.astype(np.float64), 3)  # (H, steps)
        layers.append([[None if not math.isfinite(v) else float(v) for v in r] for r in m.tolist()])
    dates = [str(d)[:10] for d in np.asarray(st.race_date)[idx]]
    plateau = row.get("plateau_step")
    plateau = None if plateau is None or pd.isna(plateau) else int(plateau)
    return {
        "id": str(st.dog_id),
        "name": str(st.dog_name),
        "cohort": str(row.get("cohort", "")),
        "n_steps": int(t),
        "n_layers": int(h.shape[1]),
        "n_units": int(h.shape[2]),
        "steps": _ints(idx + 1),
        "dates": dates,
        "z": layers,
        "plateau": plateau,
    }


def _abs_sum_section(run: _Run, dog: pd.DataFrame | None, chosen_ids: list[str], layer: int) -> Section:
    intro = (
        "The notebook's curve: how large the hidden state is after each race. s is the abs-sum of the state "
        "divided by the number of units (0 = all units at zero, 1 = every unit pinned at +/-1)."
    )
    step = _by_layer(run.table("stats/step.parquet"), layer)
    if not _has(step, "step", "cohort", "n", "s_q25", "s_q50", "s_q75"):
        return Section(
            "abs-sum", "Abs-sum per race", intro, (Panel("Abs-sum per race", "", note=_missing("stats/step.parquet")),)
        )
    bands = _bands(step, "s", cohorts=("saturated", "unsaturated", "partial"))
    all_line = step[step["cohort"] == "all"].sort_values("step")
    all_line = all_line[all_line["n"] >= MIN_BAND_DOGS]
    exemplars = []
    if dog is not None and chosen_ids:
        ds = run.table(
            "stats/dog_step.parquet",
            columns=["dog_index", "step", "layer", "abs_sum", "s"],
            filters=[("dog_index", "in", [int(i) for i in _indices(dog, chosen_ids)])],
        )
        top = dog
        for did in chosen_ids:
            r = top[top["dog_id"] == did]
            if ds is None or not len(r):
                continue
            sub = _by_layer(ds[ds["dog_index"] == int(r["dog_index"].iloc[0])], layer).sort_values("step")
            p = r["plateau_step"].iloc[0]
            exemplars.append(
                {
                    "name": str(r["dog_name"].iloc[0]),
                    "x": _ints(sub["step"]),
                    "y": _sigs(sub["s"]),
                    "abs_sum": _sigs(sub["abs_sum"]),
                    "plateau": None if pd.isna(p) else int(p),
                }
            )
    median_plateau = None
    if _has(dog, "plateau_step"):
        ps = pd.to_numeric(dog["plateau_step"], errors="coerce").dropna()
        median_plateau = sig(ps.median()) if len(ps) else None
    data = {
        "bands": bands,
        "lines": [
            {
                "name": "all dogs (median)",
                "x": _ints(all_line["step"]),
                "y": _sigs(all_line["s_q50"]),
                "color": _colour("all"),
                "dash": "dot",
            }
        ],
        "exemplars": exemplars,
        "vline": median_plateau,
        "vline_label": f"median plateau {median_plateau:.0f}" if median_plateau is not None else None,
        "xlabel": "race (step)",
        "ylabel": "s = abs-sum / units",
        "yrange": [0, 1],
    }
    panel = Panel(
        "Abs-sum per race: cohorts and exemplar dogs",
        "Shaded bands are the middle half (25th-75th percentile) of each cohort's dogs at each race, the line inside "
        "is the median; thin lines are the two heatmap dogs, a diamond marks each one's plateau; the dashed vertical "
        f"line is the median plateau race over all dogs. Bands stop where fewer than {MIN_BAND_DOGS} dogs have raced that often.",
        FigureSpec("bands", "fig-abs-sum", data, height=420),
    )
    return Section("abs-sum", "Abs-sum per race", intro, (panel,))


def _indices(dog: pd.DataFrame, ids: list[str]) -> list[int]:
    return sorted(set(dog.loc[dog["dog_id"].isin(ids), "dog_index"].astype(int).tolist()))


def _bands(step: pd.DataFrame, q: str, cohorts: Sequence[str]) -> list[dict]:
    out = []
    for c in cohorts:
        sub = step[(step["cohort"] == c) & (step["n"] >= MIN_BAND_DOGS)].sort_values("step")
        if not len(sub):
            continue
        out.append(
            {
                "name": c,
                "color": _colour(c),
                "x": _ints(sub["step"]),
                "lo": _sigs(sub[f"{q}_q25"]),
                "mid": _sigs(sub[f"{q}_q50"]),
                "hi": _sigs(sub[f"{q}_q75"]),
                "n": _ints(sub["n"]),
            }
        )
    return out


def _saturation_section(run: _Run, summary: dict | None, layer: int) -> Section:
    intro = (
        "The three kinds of saturation (see the glossary at the end): magnitude (F_tau by race), gates "
        "(z and r stuck at 0 or 1) and spectral (effective dimension), plus how long dogs take to plateau."
    )
    panels = [_f_tau_panel(run, layer), _gate_panel(run), *_unit_health_panels(run, summary), _plateau_panel(run)]
    return Section("saturation", "Saturation", intro, tuple(panels))


def _f_tau_panel(run: _Run, layer: int) -> Panel:
    explain = (
        "Left: the share of units with |h| >= 0.95 (F_0.95), middle half and median per cohort. Right: the mean over "
        "all dogs at three thresholds tau; the gap between the lines says how close to +/-1 the pinned units are."
    )
    step = _by_layer(run.table("stats/step.parquet"), layer)
    ds = run.table("stats/dog_step.parquet", columns=["step", "layer", "f090", "f095", "f099"])
    if not _has(step, "f095_q25", "f095_q50", "f095_q75") and not _has(ds, "f095"):
        return Panel("F_tau by race", explain, note=_missing("stats/step.parquet and stats/dog_step.parquet"))
    bands = _bands(step, "f095", ("saturated", "partial", "unsaturated")) if _has(step, "f095_q50") else []
    lines = []
    if _has(ds, "step", "f090", "f095", "f099"):
        ds = _by_layer(ds, layer)
        g = ds.groupby("step", sort=True).agg(
            n=("f095", "size"), f090=("f090", "mean"), f095=("f095", "mean"), f099=("f099", "mean")
        )
        g = g[g["n"] >= MIN_BAND_DOGS]
        for col, tau, dash in (("f090", "0.9", "dot"), ("f095", "0.95", "solid"), ("f099", "0.99", "dash")):
            lines.append(
                {"name": f"tau = {tau}", "x": _ints(g.index), "y": _sigs(g[col]), "color": "#111827", "dash": dash}
            )
    data = {
        "bands": bands,
        "lines": lines,
        "xlabel": "race (step)",
        "ylabel": "F_tau (share of units)",
        "yrange": [0, 1],
        "split": True,
    }
    return Panel("F_tau by race", explain, FigureSpec("bands", "fig-f-tau", data, height=400))


def _gate_panel(run: _Run) -> Panel:
    explain = (
        "Each dot is one gate unit: how often it is below 0.1 (x, left-saturated) and above 0.9 (y, right-saturated), "
        "one panel per layer, seed 0. Dots near the origin are healthy; dots hugging an axis are stuck. "
        "A z unit high on y keeps its old state and ignores new races."
    )
    unit = run.table("stats/unit.parquet")
    if not _has(unit, "layer", "gate", "unit", "left", "right"):
        return Panel("Gate saturation per layer", explain, note=_missing("stats/unit.parquet"))
    if "seed" in unit.columns:
        unit = unit[unit["seed"] == unit["seed"].min()]
    layers = []
    for layer in sorted(unit["layer"].unique()):
        sub = unit[unit["layer"] == layer]
        gates = []
        for gate, colour in (("z", "#b45309"), ("r", "#0e7490")):
            g = sub[sub["gate"] == gate].sort_values("unit")
            if len(g):
                gates.append(
                    {
                        "name": f"{gate} gate",
                        "x": _sigs(g["left"]),
                        "y": _sigs(g["right"]),
                        "unit": _ints(g["unit"]),
                        "color": colour,
                    }
                )
        layers.append({"layer": int(layer), "gates": gates})
    return Panel("Gate saturation per layer", explain, FigureSpec("gates", "fig-gates", {"layers": layers}, height=400))


def _layer_value(obj: Any, layer: int) -> Any:
    if isinstance(obj, dict):
        return obj.get(str(layer), obj.get(layer))
    if isinstance(obj, (list, tuple)):
        return obj[layer] if layer < len(obj) else None
    return obj


def _unit_health_panels(run: _Run, summary: dict | None) -> list[Panel]:
    explain_t = (
        "Per layer: units, dead units (variance ~ 0: they never move), always-saturated units (|h| pinned), and the "
        "effective dimension (participation ratio of the state covariance: how many directions the state really uses)."
    )
    explain_f = (
        "Each dot is one hidden unit: its mean |h| (x) and variance across all steps of all dogs (y, log scale). "
        "Dead units sit at the bottom, always-saturated units at the right."
    )
    unit = run.table("stats/unit.parquet")
    if not _has(unit, "layer", "unit", "variance", "mean_abs"):
        return [Panel("Unit health", explain_t, note=_missing("stats/unit.parquet"))]
    if "seed" in unit.columns:
        unit = unit[unit["seed"] == unit["seed"].min()]
    state = unit[unit["gate"] == "h"] if "gate" in unit.columns and (unit["gate"] == "h").any() else unit
    state = state.drop_duplicates(["layer", "unit"]).sort_values(["layer", "unit"])
    rows = []
    for layer in sorted(state["layer"].unique()):
        s = state[state["layer"] == layer]
        eff = _layer_value((summary or {}).get("effective_dim"), int(layer))
        rows.append(
            (
                int(layer),
                len(s),
                int(s["dead"].sum()) if "dead" in s.columns else None,
                int(s["always_saturated"].sum()) if "always_saturated" in s.columns else None,
                sig(eff),
                sig(s["mean_abs"].mean()),
            )
        )
    table = Table(("layer", "units", "dead", "always saturated", "effective dimension", "mean |h|"), tuple(rows))
    series = []
    for name, mask, colour in (
        ("dead", state.get("dead", pd.Series(False, index=state.index)).astype(bool), "#6b7280"),
        (
            "always saturated",
            state.get("always_saturated", pd.Series(False, index=state.index)).astype(bool),
            "#c2410c",
        ),
    ):
        sub = state[mask]
        if len(sub):
            series.append(_unit_series(name, sub, colour))
    rest = state[~(state.get("dead", False).astype(bool) | state.get("always_saturated", False).astype(bool))]
    series.insert(0, _unit_series("healthy", rest, "#0f766e"))
    fig = FigureSpec(
        "scatter",
        "fig-unit-health",
        {"series": series, "xlabel": "mean |h|", "ylabel": "variance", "log_y": True, "xrange": [0, 1]},
        height=360,
    )
    return [Panel("Unit health", explain_t, table=table), Panel("Units: size vs movement", explain_f, fig)]


def _unit_series(name: str, df: pd.DataFrame, colour: str) -> dict:
    text = [f"layer {int(l)} unit {int(u)}" for l, u in zip(df["layer"], df["unit"])]
    return {"name": name, "x": _sigs(df["mean_abs"]), "y": _sigs(df["variance"]), "text": text, "color": colour}


def _plateau_panel(run: _Run) -> Panel:
    explain = (
        "Time to plateau: the share of dogs whose state has not yet plateaued, by race (Kaplan-Meier style, so dogs "
        "with short careers count while they race and then drop out instead of counting as 'never'). "
        "Where the curve crosses 50% is the median time to saturation."
    )
    pl = run.table("stats/plateau.parquet")
    if not _has(pl, "layer", "step", "survival"):
        return Panel("Time to plateau", explain, note=_missing("stats/plateau.parquet"))
    series = []
    for layer in sorted(pl["layer"].unique()):
        sub = pl[pl["layer"] == layer].sort_values("step")
        if "at_risk" in sub.columns:
            sub = sub[sub["at_risk"] >= MIN_BAND_DOGS]
        series.append(
            {
                "name": f"layer {int(layer)}",
                "x": _ints(sub["step"]),
                "y": _sigs(sub["survival"]),
                "text": [f"{int(a):,} dogs still racing" for a in sub["at_risk"]] if "at_risk" in sub.columns else None,
                "shape": "hv",
            }
        )
    data = {
        "series": series,
        "xlabel": "race (step)",
        "ylabel": "share not yet plateaued",
        "yrange": [0, 1.02],
        "hline": 0.5,
    }
    return Panel("Time to plateau", explain, FigureSpec("lines", "fig-plateau", data, height=360))


def _cohort_section(
    run: _Run, dog: pd.DataFrame | None, counts: tuple[tuple[str, int], ...], rule: dict | None
) -> Section:
    intro = (
        "Does saturation matter for prediction? Each cohort's win log-loss, Brier score, AUC and winner hit rate, "
        "with 95% intervals from a bootstrap over dogs, against the market's prices and a uniform guess."
    )
    panels = [
        _sizes_panel(dog, counts),
        _metrics_panel(run),
        _effect_panel(run),
        _length_panel(run),
        _calibration_panel(run),
        _sensitivity_panel(run, rule),
    ]
    return Section("cohorts", "Saturated vs unsaturated dogs", intro, tuple(panels))


def _sizes_panel(dog: pd.DataFrame | None, counts: tuple[tuple[str, int], ...]) -> Panel:
    explain = "How many dogs fall in each cohort, and how long their careers are (more races give the state more time to saturate)."
    if not counts:
        return Panel("Cohort sizes", explain, note=_missing("stats/dog.parquet"))
    total = sum(n for _, n in counts) or 1
    med: dict[str, tuple[Any, Any]] = {}
    if _has(dog, "cohort", "n_steps"):
        for c, g in dog.groupby("cohort"):
            ps = (
                pd.to_numeric(g.get("plateau_step"), errors="coerce").dropna()
                if "plateau_step" in g
                else pd.Series([], dtype=float)
            )
            med[str(c)] = (sig(g["n_steps"].median()), sig(ps.median()) if len(ps) else None)
    rows = tuple((c, n, sig(100 * n / total, 3), *med.get(c, (None, None))) for c, n in counts)
    return Panel(
        "Cohort sizes",
        explain,
        table=Table(("cohort", "dogs", "share %", "median races", "median plateau race"), rows),
    )


def _metrics_panel(run: _Run) -> Panel:
    explain = (
        "Dots are estimates, whiskers 95% intervals. Lower is better for log-loss and Brier, higher for AUC and hit "
        "rate. Compare a cohort's model dot with its market dot: the model's edge (or not) in that cohort."
    )
    cm = run.table("eval/cohort_metrics.parquet")
    if not _has(cm, "cohort", "metric", "value", "source"):
        return Panel("Metrics by cohort", explain, note=_missing("eval/cohort_metrics.parquet"))
    metrics = [m for m in ("log_loss", "brier", "auc", "hit_rate") if m in set(cm["metric"])]
    cohorts = _cohorts_in(cm["cohort"])
    panels = []
    for m in metrics:
        sub = cm[cm["metric"] == m]
        series = []
        for src in [s for s in SOURCE_COLOURS if s in set(sub["source"])] + sorted(
            set(sub["source"]) - set(SOURCE_COLOURS)
        ):
            s = sub[sub["source"] == src].set_index("cohort").reindex(cohorts)
            series.append(
                {
                    "name": src,
                    "color": SOURCE_COLOURS.get(src, "#374151"),
                    "y": _sigs(s["value"]),
                    "lo": _sigs(s["lo"]) if "lo" in s else None,
                    "hi": _sigs(s["hi"]) if "hi" in s else None,
                }
            )
        panels.append({"title": m.replace("_", "-"), "categories": cohorts, "series": series})
    return Panel(
        "Metrics by cohort",
        explain,
        FigureSpec("grouped", "fig-metrics", {"panels": panels, "mode": "points"}, height=420),
    )


def _effect_panel(run: _Run) -> Panel:
    explain = (
        "The difference between two cohorts (a - b) with its 95% bootstrap interval over dogs. An interval that "
        "excludes 0 is a difference this run can see; one that straddles 0 is not."
    )
    eff = run.table("eval/effect_size.parquet")
    if not _has(eff, "metric", "diff", "lo", "hi"):
        return Panel("Effect sizes", explain, note=_missing("eval/effect_size.parquet"))
    rows = []
    has_adjust = "adjust" in eff.columns
    for _, r in eff.iterrows():
        d, lo, hi = sig(r["diff"]), sig(r["lo"]), sig(r["hi"])
        if d is None or lo is None or hi is None:
            interval, reads = None, "not computed (a cohort is empty or too small)"
        else:
            interval = f"{lo:.4g} to {hi:.4g}"
            reads = "clear difference" if (lo > 0 or hi < 0) else "no clear difference"
        adjust = (
            {"none": "as is", "length_matched": "at equal history length"}.get(str(r["adjust"]), str(r["adjust"]))
            if has_adjust
            else "as is"
        )
        rows.append((str(r["metric"]), adjust, str(r.get("a", "")), str(r.get("b", "")), d, interval, reads))
    cols = ("metric", "compared", "a", "b", "a - b", "95% interval", "reads as")
    return Panel("Effect sizes", explain, table=Table(cols, tuple(rows)))


def _length_panel(run: _Run) -> Panel:
    explain = (
        "The same comparison within bands of career length, so 'saturated' cannot just mean 'raced more'. If the gap "
        "between cohorts persists inside each band, it is about the state, not the history length."
    )
    lm = run.table("eval/length_matched.parquet")
    if not _has(lm, "stratum", "cohort", "metric", "value"):
        return Panel("At equal history length", explain, note=_missing("eval/length_matched.parquet"))
    strata = list(dict.fromkeys(sorted(lm["stratum"].astype(str), key=_stratum_key)))
    panels = []
    for m in [m for m in ("log_loss", "brier", "auc", "hit_rate") if m in set(lm["metric"])]:
        sub = lm[lm["metric"] == m]
        series = []
        for c in _cohorts_in(sub["cohort"]):
            s = (
                sub[sub["cohort"] == c]
                .assign(stratum=lambda d: d["stratum"].astype(str))
                .set_index("stratum")
                .reindex(strata)
            )
            series.append(
                {
                    "name": c,
                    "color": _colour(c),
                    "y": _sigs(s["value"]),
                    "lo": _sigs(s["lo"]) if "lo" in s else None,
                    "hi": _sigs(s["hi"]) if "hi" in s else None,
                }
            )
        panels.append({"title": m.replace("_", "-") + " by races run", "categories": strata, "series": series})
    return Panel(
        "At equal history length",
        explain,
        FigureSpec("grouped", "fig-length-matched", {"panels": panels[:2], "mode": "points"}, height=400),
    )


def _stratum_key(s: str) -> tuple[float, str]:
    digits = "".join(ch if ch.isdigit() else " " for ch in s).split()
    return (float(digits[0]) if digits else math.inf, s)


def _calibration_panel(run: _Run) -> Panel:
    explain = (
        "Predicted win probability (x) against how often those dogs actually won (y), in bins. On the diagonal is "
        "well calibrated; below it the model is over-confident."
    )
    cal = run.table("eval/calibration.parquet")
    if not _has(cal, "cohort", "p_mean", "won_rate"):
        return Panel("Calibration", explain, note=_missing("eval/calibration.parquet"))
    series = []
    for c in _cohorts_in(cal["cohort"]):
        sub = cal[cal["cohort"] == c].sort_values("p_mean")
        series.append(
            {
                "name": c,
                "x": _sigs(sub["p_mean"]),
                "y": _sigs(sub["won_rate"]),
                "color": _colour(c),
                "mode": "lines+markers",
            }
        )
    hi = sig(max(cal["p_mean"].max(), cal["won_rate"].max()) * 1.05) or 1.0
    data = {
        "series": series,
        "xlabel": "predicted probability",
        "ylabel": "observed win rate",
        "diagonal": hi,
        "xrange": [0, hi],
        "yrange": [0, hi],
    }
    return Panel("Calibration", explain, FigureSpec("lines", "fig-calibration", data, height=380))


def _sensitivity_panel(run: _Run, rule: dict | None) -> Panel:
    explain = (
        "How the cohorts move when the rule's thresholds move: left, the share of dogs called saturated as theta "
        "(the F needed after the plateau) changes, one line per tau; right, the saturated cohort's log-loss. "
        "Flat lines mean the verdict does not hinge on the exact thresholds."
    )
    sens = run.table("eval/sensitivity.parquet")
    if not _has(sens, "tau", "theta", "cohort", "n_dogs"):
        return Panel("Threshold sensitivity", explain, note=_missing("eval/sensitivity.parquet"))
    tot = sens.groupby(["tau", "theta"])["n_dogs"].transform("sum").replace(0, np.nan)
    sens = sens.assign(share=sens["n_dogs"] / tot)
    sat = sens[sens["cohort"] == "saturated"]
    share, ll = [], []
    for i, tau in enumerate(sorted(sat["tau"].unique())):
        s = sat[sat["tau"] == tau].sort_values("theta")
        dash = ("dot", "solid", "dash", "dashdot")[i % 4]
        share.append(
            {
                "name": f"tau {sig(tau)}",
                "x": _sigs(s["theta"]),
                "y": _sigs(s["share"]),
                "dash": dash,
                "color": _colour("saturated"),
            }
        )
        if "log_loss" in s.columns:
            ll.append(
                {
                    "name": f"tau {sig(tau)}",
                    "x": _sigs(s["theta"]),
                    "y": _sigs(s["log_loss"]),
                    "dash": dash,
                    "color": _colour("saturated"),
                }
            )
    params = (rule or {}).get("params", {}) if isinstance(rule, dict) else {}
    data = {
        "panels": [
            {"title": "share of dogs saturated", "series": share, "ylabel": "share"},
            {"title": "log-loss of saturated dogs", "series": ll, "ylabel": "log-loss"},
        ],
        "xlabel": "theta",
        "vline": sig(params.get("theta")),
        "vline_label": "tonight's rule",
    }
    return Panel("Threshold sensitivity", explain, FigureSpec("lines2", "fig-sensitivity", data, height=360))


def _repro_section(run: _Run) -> Section:
    intro = (
        "Would another training seed tell the same story? The K seed models are compared on their states "
        "(CKA), their predictions (spread, top-pick churn) and their cohort labels (Cohen's kappa)."
    )
    panels = []
    cka = run.table("eval/cka.parquet")
    explain = (
        "Linear CKA between two seeds' hidden states at each race (1 = the same representation up to rotation and "
        "scale, 0 = unrelated). Rising CKA means seeds agree more once states settle."
    )
    if _has(cka, "step", "seed_a", "seed_b", "cka"):
        series = []
        for (a, b), g in cka.groupby(["seed_a", "seed_b"], sort=True):
            g = g.sort_values("step")
            series.append({"name": f"seed {int(a)} vs {int(b)}", "x": _ints(g["step"]), "y": _sigs(g["cka"])})
        panels.append(
            Panel(
                "CKA between seeds by race",
                explain,
                FigureSpec(
                    "lines",
                    "fig-cka",
                    {"series": series, "xlabel": "race (step)", "ylabel": "linear CKA", "yrange": [0, 1.02]},
                    height=340,
                ),
            )
        )
    else:
        panels.append(Panel("CKA between seeds by race", explain, note=_missing("eval/cka.parquet")))
    rep = run.table("eval/repro.parquet")
    explain = (
        "prob_spread: mean spread of the seeds' win probabilities for the same runner; top_pick_churn: share of races "
        "where the seeds pick different winners; kappa: agreement of the seeds' cohort labels beyond chance."
    )
    if _has(rep, "scope", "metric", "value"):
        piv = rep.pivot_table(index="scope", columns="metric", values="value", aggfunc="first")
        metrics = [m for m in ("prob_spread", "top_pick_churn", "kappa") if m in piv.columns] + sorted(
            set(piv.columns) - {"prob_spread", "top_pick_churn", "kappa"}
        )
        rows = tuple((s, *[sig(piv.loc[s, m]) for m in metrics]) for s in _cohorts_in(piv.index))
        panels.append(Panel("Prediction spread, churn and agreement", explain, table=Table(("scope", *metrics), rows)))
    else:
        panels.append(Panel("Prediction spread, churn and agreement", explain, note=_missing("eval/repro.parquet")))
    return Section("reproducibility", "Reproducibility across seeds", intro, tuple(panels))


def _resilience_section(run: _Run) -> Section:
    intro = (
        "How much do data problems hurt? Inputs are perturbed (a race dropped, order shuffled, noisy times, missing "
        "values, a duplicated race, a truncated history) and the change in loss, the top-pick flip rate and the state "
        "divergence are measured by cohort and by position in the career."
    )
    res = run.table("eval/resilience.parquet")
    if not _has(res, "perturbation", "cohort", "d_loss"):
        return Section(
            "resilience",
            "Resilience to data issues",
            intro,
            (Panel("Resilience", "", note=_missing("eval/resilience.parquet")),),
        )
    if "severity" in res.columns:
        worst = res.groupby("perturbation")["severity"].transform("max")
        hard = res[res["severity"] == worst]
    else:
        hard = res
    overall = (
        hard[hard["position"] == "all"] if "position" in hard.columns and (hard["position"] == "all").any() else hard
    )
    perts = sorted(overall["perturbation"].astype(str).unique())
    cohorts = [c for c in _cohorts_in(overall["cohort"])]
    panels = []
    for col, title in (
        ("d_loss", "change in log-loss"),
        ("flip_rate", "top-pick flip rate"),
        ("state_divergence", "state divergence"),
    ):
        if col not in overall.columns:
            continue
        g = overall.groupby(["perturbation", "cohort"])[col].mean()
        series = [{"name": c, "color": _colour(c), "y": _sigs(g.get((p, c)) for p in perts)} for c in cohorts]
        panels.append({"title": title, "categories": perts, "series": series})
    out = [
        Panel(
            "By perturbation and cohort",
            "Each perturbation at its strongest severity, all positions. Taller bars: that cohort's predictions move "
            "more when the data is damaged that way.",
            FigureSpec("grouped", "fig-resilience", {"panels": panels, "mode": "bars"}, height=400),
        )
    ]
    if "position" in hard.columns and {"early", "late"} <= set(hard["position"]):
        pos = hard[hard["position"].isin(["early", "late"])]
        panels2 = []
        for col, title in (("d_loss", "change in log-loss"), ("state_divergence", "state divergence")):
            if col not in pos.columns:
                continue
            g = pos.groupby(["position", "cohort"])[col].mean()
            series = [
                {
                    "name": p,
                    "color": {"early": "#be123c", "late": "#1e3a8a"}[p],
                    "y": _sigs(g.get((p, c)) for c in cohorts),
                }
                for p in ("early", "late")
            ]
            panels2.append({"title": title, "categories": cohorts, "series": series})
        out.append(
            Panel(
                "Early vs late in the career",
                "Mean over perturbations at their strongest severity. The notebook's hypothesis: early steps (before "
                "the plateau) are less resilient, so the early bars should be taller.",
                FigureSpec("grouped", "fig-resilience-position", {"panels": panels2, "mode": "bars"}, height=360),
            )
        )
    cols = [
        c
        for c in ("perturbation", "severity", "cohort", "position", "d_loss", "flip_rate", "state_divergence", "n")
        if c in res.columns
    ]
    full = res.sort_values(
        [c for c in ("perturbation", "severity", "cohort", "position") if c in res.columns], kind="stable"
    )
    rows = tuple(
        tuple(
            sig(v) if isinstance(v, (float, np.floating)) else (int(v) if isinstance(v, (np.integer,)) else str(v))
            for v in r
        )
        for r in full[cols].itertuples(index=False)
    )
    out.append(
        Panel(
            "All resilience numbers",
            "Every perturbation, severity, cohort and position.",
            table=Table(tuple(cols), rows),
            collapsed=True,
        )
    )
    return Section("resilience", "Resilience to data issues", intro, tuple(out))


def _divergence_section(run: _Run, dog: pd.DataFrame | None) -> Section:
    intro = "From the same initial state, how far apart two dogs' hidden states move race by race (Euclidean distance)."
    div = run.table("eval/divergence.parquet")
    if not _has(div, "pair", "step", "distance"):
        return Section(
            "divergence",
            "Two-dog divergence",
            intro,
            (Panel("Divergence", "", note=_missing("eval/divergence.parquet")),),
        )
    names = {}
    if _has(dog, "dog_id", "dog_name"):
        names = dict(zip(dog["dog_id"].astype(str), dog["dog_name"].astype(str)))
    series = []
    for pair, g in div.groupby("pair", sort=True):
        g = g.sort_values("step")
        label = str(pair)
        if "dog_a" in g.columns and "dog_b" in g.columns:
            a, b = str(g["dog_a"].iloc[0]), str(g["dog_b"].iloc[0])
            label = f"{names.get(a, a)} vs {names.get(b, b)}"
        series.append({"name": label, "x": _ints(g["step"]), "y": _sigs(g["distance"])})
    panel = Panel(
        "Distance between two dogs' states",
        "A curve that levels off means both states have settled (often both saturated); one that keeps growing means "
        "the dogs' form keeps pushing them apart.",
        FigureSpec(
            "lines",
            "fig-divergence",
            {"series": series, "xlabel": "race (step)", "ylabel": "||h_a - h_b||"},
            height=340,
        ),
    )
    return Section("divergence", "Two-dog divergence", intro, (panel,))


def _trend_section(night: str, head: dict, history: list[tuple[str, dict]]) -> Section:
    intro = (
        "Tonight against previous nights: is the model drifting, is the market catching up, are more dogs saturating?"
    )
    if not history:
        return Section(
            "trend",
            "Trend across nights",
            intro,
            (Panel("Trend", "", note="No previous nights were given: the trend starts tomorrow."),),
        )
    nights = history + [(night, head)]
    xs = [n for n, _ in nights]
    series = []
    for key, name, colour in (
        ("model_log_loss", "model", SOURCE_COLOURS["model"]),
        ("market_log_loss", "market", SOURCE_COLOURS["market"]),
    ):
        ys = [sig(h.get(key)) for _, h in nights]
        if any(y is not None for y in ys):
            series.append({"name": name, "x": xs, "y": ys, "color": colour, "mode": "lines+markers"})
    share = [sig(h.get("saturated_share")) for _, h in nights]
    data = {
        "panels": [
            {"title": "log-loss", "series": series, "ylabel": "log-loss"},
            {
                "title": "share of dogs saturated",
                "series": [
                    {
                        "name": "saturated share",
                        "x": xs,
                        "y": share,
                        "color": _colour("saturated"),
                        "mode": "lines+markers",
                    }
                ],
                "ylabel": "share",
            },
        ],
        "xlabel": "night",
        "category_x": True,
    }
    cols = ("night", "dogs", "saturated share", "model log-loss", "market log-loss")
    rows = tuple(
        (n, h.get("dogs"), sig(h.get("saturated_share")), sig(h.get("model_log_loss")), sig(h.get("market_log_loss")))
        for n, h in reversed(nights)
    )
    return Section(
        "trend",
        "Trend across nights",
        intro,
        (
            Panel(
                "Headline numbers by night",
                "One point per night; tonight is the last.",
                FigureSpec("lines2", "fig-trend", data, height=340),
            ),
            Panel("Nights", "Newest first.", table=Table(cols, rows), collapsed=len(rows) > 10),
        ),
    )


def _quality_section(dq: dict | None) -> Section:
    intro = "What went in: every input row ends as accepted, rejected (with a reason) or merged as a duplicate; nothing is dropped silently."
    if not dq:
        return Section(
            "data-quality",
            "Data quality",
            intro,
            (
                Panel(
                    "Rows in and out", "", note="Not provided for this run: no ingest summary was passed to the report."
                ),
            ),
        )
    rows_in, acc, rej, dup = (dq.get(k) for k in ("rows_in", "accepted", "rejected", "duplicates_merged"))
    rows = [("rows in", rows_in), ("accepted", acc), ("rejected", rej), ("duplicates merged", dup)]
    for k in ("dogs", "races"):
        if k in dq:
            rows.append((k, dq[k]))
    explain = "Counts from tonight's ingest."
    if all(isinstance(v, (int, float)) for v in (rows_in, acc, rej, dup)):
        ok = int(rows_in) == int(acc) + int(rej) + int(dup)
        explain += " Check rows in = accepted + rejected + duplicates merged: " + (
            "holds." if ok else "DOES NOT HOLD - rows were lost; investigate the ingest."
        )
    panels = [
        Panel(
            "Rows in and out",
            explain,
            table=Table(("", "rows"), tuple((k, None if v is None else int(v)) for k, v in rows)),
        )
    ]
    reasons = dq.get("rejects_by_reason") or {}
    if reasons:
        r = tuple(sorted(((str(k), int(v)) for k, v in reasons.items()), key=lambda kv: (-kv[1], kv[0])))
        panels.append(
            Panel(
                "Rejected rows by reason",
                "Most common first; the rejected rows themselves are in the snapshot's rejects.parquet.",
                table=Table(("reason", "rows"), r),
            )
        )
    files = dq.get("files") or []
    if files:
        rows_f = []
        for f in files:
            if isinstance(f, dict):  # the snapshot manifest: path, format, rows, sha256, bytes
                rows_f.append(
                    (
                        Path(str(f.get("path", "?"))).name,
                        str(f.get("format", "")),
                        f.get("rows"),
                        str(f.get("sha256", ""))[:12],
                    )
                )
            else:
                rows_f.append((Path(str(f)).name, "", None, ""))
        rows_f.sort(key=lambda r: r[0])
        span = (
            f" Races from {dq['first_date']} to {dq['last_date']}."
            if dq.get("first_date") and dq.get("last_date")
            else ""
        )
        panels.append(
            Panel(
                "Source files",
                f"{len(files)} file(s) read.{span}",
                table=Table(("file", "format", "rows", "sha256"), tuple(rows_f)),
                collapsed=len(files) > 5,
            )
        )
    return Section("data-quality", "Data quality", intro, tuple(panels))


def _provenance(run_meta: dict, head: dict, rule: dict | None, night: str) -> tuple[tuple[str, str], ...]:
    def text(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, (list, tuple)):
            return ", ".join(str(x) for x in v)
        return str(v)

    rule_text = "n/a"
    if isinstance(rule, dict):
        params = rule.get("params") or {}
        p = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        rule_text = f"{rule.get('name', '?')} v{rule.get('version', '?')}" + (f" ({p})" if p else "")
    elif rule:
        rule_text = str(rule)
    return (
        ("night", night),
        ("run", text(run_meta.get("run_id"))),
        ("data snapshot", text(run_meta.get("snapshot_id"))),
        ("model set", text(run_meta.get("model_set_id"))),
        ("seeds", text(run_meta.get("seeds"))),
        ("code version", text(run_meta.get("code_version"))),
        ("device", text(run_meta.get("device"))),
        ("cohort rule", rule_text),
        ("run created", text(run_meta.get("created_at"))),
    )


def _per_dog(dog: pd.DataFrame | None, summary: dict | None) -> tuple[pd.DataFrame | None, int]:
    """One row per dog at the layer whose cohorts count (stats marks it `cohort_layer`), and that layer."""
    if dog is None or "layer" not in dog.columns or not len(dog):
        return dog, 0
    if "cohort_layer" in dog.columns and dog["cohort_layer"].astype(bool).any():
        layer = int(dog.loc[dog["cohort_layer"].astype(bool), "layer"].iloc[0])
    elif isinstance((summary or {}).get("cohort_layer"), int):
        layer = int(summary["cohort_layer"])
    else:
        layer = int(dog["layer"].max())
    return dog[dog["layer"] == layer].reset_index(drop=True), layer


def _default_loader(run_dir: Path) -> tuple[Callable | None, str | None]:
    """open_states(run_dir).dog when storage.states exists and the run has a states store."""
    try:
        from storage.states import open_states  # type: ignore[import-not-found]
    except ImportError:
        return None, "Not available: the states store reader (storage.states) is not installed."
    if not (run_dir / "states.zarr").exists():
        return None, "Not computed for this run: states.zarr is missing."
    try:
        return open_states(run_dir).dog, None
    except Exception as exc:  # a broken store must not sink the rest of the report
        return None, f"The states store could not be opened: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- entry point


def build_report(
    run_dir: str | Path,
    *,
    history: Iterable[str | Path] = (),
    watchlist: Sequence[str] = (),
    data_quality: dict | None = None,
    dog_states: Callable[..., Any] | None = None,
) -> ReportModel:
    """The nightly report's content from a run directory (and earlier runs for the trend).

    `dog_states(dog_id, seed=0)` returns an object with dog_id, dog_name, race_date (T,), race_id (T,),
    h/z/r (T, L, H); default `storage.states.open_states(run_dir).dog`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(
            f"report: run directory {run_dir} does not exist; pass a published run (storage.states.latest_run)"
        )
    run = _Run(run_dir)
    run_meta = run.json("run.json") or {}
    head = run.json("eval/headline.json") or {}
    summary = run.json("stats/summary.json")
    night = str(head.get("night") or run_meta.get("night") or run_dir.name)
    rule = (summary or {}).get("rule") or run_meta.get("cohort_rule")
    if data_quality is None:
        data_quality = run_meta.get("data_quality") or run_meta.get("ingest")

    dog = run.table("stats/dog.parquet")
    dog, layer = _per_dog(dog, summary)
    if head and "median_plateau_step" not in head and _has(dog, "plateau_step"):
        ps = pd.to_numeric(dog["plateau_step"], errors="coerce").dropna()
        head = {**head, "median_plateau_step": sig(ps.median()) if len(ps) else None}
    hist = _history(history, night)
    prev = hist[-1] if hist else None
    counts = _cohort_counts(head, summary, dog)

    loader, loader_note = (dog_states, None) if dog_states is not None else _default_loader(run_dir)
    states = _states_section(run, dog, list(watchlist), loader, loader_note)
    chosen = [
        d["id"]
        for p in states.panels
        if p.figure is not None and p.figure.kind == "anim_heatmap"
        for d in p.figure.data["dogs"]
    ]
    chosen_ids = [str(c) for c in chosen]

    sections = (
        states,
        _abs_sum_section(run, dog, chosen_ids, layer),
        _saturation_section(run, summary, layer),
        _cohort_section(run, dog, counts, rule),
        _repro_section(run),
        _resilience_section(run),
        _divergence_section(run, dog),
        _trend_section(night, head, hist),
        _quality_section(data_quality),
    )
    return ReportModel(
        title=f"gruviz nightly report {night}",
        night=night,
        verdict=_verdict(
            head,
            dict(counts),
            sig(head.get("median_plateau_step")),
            run.table("eval/effect_size.parquet"),
            run.table("eval/length_matched.parquet"),
        ),
        headline=_headline_numbers(head, prev[1] if prev else None),
        cohort_counts=counts,
        provenance=_provenance(run_meta, head, rule, night),
        previous_night=prev[0] if prev else None,
        sections=sections,
    )
