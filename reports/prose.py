"""The report's words, apart from its code: glossary, section intros, panel explanations, verdict sentences.

Keys are section ids (`INTRO`) and panel keys (`EXPLAIN`); templates use str.format fields.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "GLOSSARY", "INTRO", "EXPLAIN", "VERDICT", "PAGE_ONE", "VERDICT_RES", "REPRO_READING", "MISSING", "STATES_HOW", "METRIC_NAMES",
    "HIGHER_IS_BETTER", "COHORT_EXPLAIN",
]

GLOSSARY: tuple[tuple[str, str], ...] = (
    (
        "Information saturation (primary)",
        "The abs-sum of the hidden state has reached its plateau: s = mean |h| (the abs-sum divided by the units) "
        "stops changing, by the rule plateau-s (relative change over w races below delta for k races). The "
        "notebook's curve.",
    ),
    (
        "Magnitude saturation (diagnostic)",
        "Hidden units pinned near the tanh boundary (|h| close to 1), by the share F_tau of units with |h| >= tau and "
        "the largest |h|. Rule tanh-f. A model can plateau without any unit near +-1.",
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
        "Write fraction u and movement m",
        "u = 1 - mean z: the share of the state the update gate rewrites at a race. m = ||h_t - h_{t-1}|| / ||h_t||: "
        "how far the race moved the state. Both measure how much the model relies on the latest race.",
    ),
    (
        "Status at prediction time: settled, settling, undecided",
        "A race is predicted from the state before it, h_{t-1}, so its status comes from s_1..s_{t-1} only: settled "
        "(plateau confirmed by t-1), settling (at least w + k earlier races, no plateau yet), undecided (fewer). "
        "Never the dog's later career.",
    ),
    (
        "Time to plateau",
        "A survival quantity: the Kaplan-Meier median (dogs with short careers count while they race). It moves "
        "with the rule's tolerance, so it is shown across the (w, delta, k) grid; the race by which the median s "
        "reaches 90% and 95% of its long-run level needs no tolerance.",
    ),
    (
        "Races and runners",
        "A race is one event; a runner is one dog in one race. Race NLL is the negative log of the probability given "
        "to each race's winner; per-runner log-loss scores every runner's win/lose probability. Different numbers.",
    ),
)
"""(term, definition), shown at the end of the page."""

MISSING = "Not computed for this run: {rel} is missing."
"""The note of a panel whose input table the run lacks."""

INTRO: Mapping[str, str] = {
    "states": (
        "What the model's memory looks like inside two typical dogs: every hidden unit (rows) after every race "
        "(columns). Red is near +1, blue near -1, white near 0."
    ),
    "abs-sum": (
        "The notebook's curve: how large the hidden state is after each race (s, the abs-sum divided by the units), "
        "and how much each race still rewrites it (write fraction u) and moves it (m)."
    ),
    "saturation": (
        "Diagnostics: magnitude saturation in numbers, time to plateau across the rule's grid, gates stuck at 0 or 1, "
        "unit health and spectral saturation, calibration."
    ),
    "comparison": (
        "Does information saturation go with the model's skill against the market? Races after the model set's "
        "training and early-stopping windows only, each grouped by the status the model had when it predicted the "
        "race (nothing after the race decides the group), settled against settling at the same step, with the "
        "checks that say whether the answer holds. 95% intervals from a bootstrap over dogs. Associations, not causes."
    ),
    "reproducibility": (
        "Would another training seed tell the same story? The K seed models are compared on their predictions "
        "(how far their probabilities spread and how often they pick different favourites, by race count and "
        "status), on accuracy (the ensemble, the mean of their probabilities, against a single seed), on the "
        "settled/settling status their states give a dog at fixed races (Fleiss' kappa), and, as one health "
        "line, on their states (debiased CKA)."
    ),
    "resilience": (
        "Does the model lean on the latest race early in a career, so that a data issue there moves early predictions "
        "more (the notebook's hypothesis)? The direct test damages only the latest race before a target race (removed, "
        "its values blanked, noise on its observed values) and compares early targets (t<=5) with late ones (t>=16). "
        "Two things are kept apart: sensitivity (how much the prediction moves: top-pick flips, |change in log p| of "
        "the dog, the KL between the race's distributions, the state's movement) and harm (the change in race NLL, on "
        "held-out races only). Sensitivity needs no outcome, so it is also measured on the same dogs at several "
        "steps over all their races: early vs late is then not young dogs vs seasoned ones. Other kinds of damage "
        "(races removed, reordered, duplicated, values blanked, noise) take a share of the history, never all of "
        "it; a case that two kinds give the same damaged input is counted once."
    ),
    "divergence": (
        "From the same initial state, how far apart two dogs' hidden states move race by race (Euclidean distance)."
    ),
    "trend": "Tonight against previous nights: is the model drifting, is the market catching up?",
    "data-quality": (
        "What went in: every input row ends as accepted, rejected (with a reason) or merged as a duplicate; "
        "nothing is dropped silently."
    ),
}
"""Section id -> the question the section answers."""

STATES_HOW: Mapping[str, str] = {
    "watchlist": "Dogs from the configured watchlist.",
    "some": "Dogs from the watchlist, then",
    "none": "No watchlist configured, so:",
    "exemplars": (
        " a typical dog of each status (gruviz_core.exemplars): the dog with at least {min_races} races whose mean s "
        "is nearest the median of its status, never the most extreme one."
    ),
}
"""How the heatmap dogs were chosen (the start of the animated panel's explanation)."""

EXPLAIN: Mapping[str, str] = {
    "states-anim": (
        "{how} Press Play to watch the top layer fill in race by race (the veiled part is still to come), "
        "or drag the slider to a race. One colour scale (-1 to +1) for every frame, so colours compare across "
        "frames and dogs."
    ),
    "states-static": (
        "The same states, all races at once, one row of panels per layer. Look for the race from which a dog's "
        "columns stop changing: that is its plateau (dashed line)."
    ),
    "abs-sum": (
        "Shaded bands are the middle half (25th-75th percentile) of each status's dogs at each race, the line inside "
        "is the median; thin lines are the two heatmap dogs, a diamond marks each one's plateau; the dashed vertical "
        "line is the race by which the median s reaches 95% of its long-run level. Bands stop where fewer than "
        "{min_dogs} dogs have raced that often."
    ),
    "reliance": (
        "Median write fraction u = 1 - mean z and relative movement m = ||h_t - h_{{t-1}}|| / ||h_t|| by race: how "
        "much of the state each race rewrites and moves. Falling curves mean the model leans less on "
        "the latest race as history builds."
    ),
    "gap": (
        "The model's per-runner log-loss minus the market's on the same runners, by the dog's race count, with 95% "
        "intervals from a bootstrap over dogs. Lower is better for the model."
    ),
    "scorecard": (
        "Settled and settling races side by side, each value with its 95% interval where the run has one; the last "
        "column is the step-matched difference where it exists."
    ),
    "magnitude": "Magnitude saturation in numbers: how close any unit gets to +-1.",
    "km-grid": "The Kaplan-Meier median time to plateau at each move of the rule's (w, delta, k), the rest at default.",
    "f-tau": (
        "Left: the share of units with |h| >= 0.95 (F_0.95), middle half and median per cohort. Right: the mean over "
        "all dogs at three thresholds tau; the gap between the lines says how close to +/-1 the pinned units are."
    ),
    "gates": (
        "Each dot is one gate unit: how often it is below 0.1 (x, left-saturated) and above 0.9 (y, right-saturated), "
        "one panel per layer, seed 0. Dots near the origin are healthy; dots hugging an axis are stuck. "
        "A z unit high on y keeps its old state and ignores new races."
    ),
    "unit-health": (
        "Per layer: units, dead units (variance ~ 0: they never move), always-saturated units (|h| pinned), and the "
        "effective dimension (participation ratio of the state covariance: how many directions the state really uses)."
    ),
    "unit-scatter": (
        "Each dot is one hidden unit: its mean |h| (x) and variance across all steps of all dogs (y, log scale). "
        "Dead units sit at the bottom, always-saturated units at the right."
    ),
    "plateau": (
        "Time to plateau: the share of dogs whose state has not yet plateaued, by race (Kaplan-Meier style, so dogs "
        "with short careers count while they race and then drop out instead of counting as 'never'). "
        "Where the curve crosses 50% is the median time to saturation."
    ),
    "cka": (
        "Debiased linear CKA (unbiased HSIC) between two seeds' top-layer states at each race, on up to 1,000 dogs "
        "with at least that many races (1 = the same representation up to rotation and scale, 0 = unrelated); "
        "'shuffled' is the same with one seed's dogs permuted, what unrelated states give. A health check of "
        "the seeds, not a test of settling."
    ),
    "repro": (
        "Spread: the sample SD (ddof = 1) of the seeds' win probabilities for the same runner, averaged over runners; "
        "each runner is grouped by its own race count and its status under seed 0. Churn: per race, the share of "
        "seed pairs whose top picks differ, averaged over races; each race is grouped by its favourite under the "
        "ensemble (that runner's race count and status), so a race counts once whether or not the seeds agree. "
        "Race count and status use debut-observed dogs only. 95% intervals: bootstrap over dogs."
    ),
    "repro-ensemble": (
        "Race NLL (mean -log p of the winner, lower is better) of each seed and of the ensemble, the mean of the "
        "seeds' probabilities, on the same races. The ensemble can only be at or below the seeds' mean (Jensen); "
        "how far below says what the seeds' disagreement costs. Interval: bootstrap over the winners' dogs."
    ),
    "repro-kappa": (
        "Do the seeds give a dog the same status? At each fixed race t, among debut-observed dogs that ran race t, "
        "each seed's status (settled or settling, from its own states' plateau) is compared: Fleiss' kappa, 1 = "
        "full agreement, 0 = chance. When one label covers more than 95% of the labels, chance agreement is about "
        "1 and kappa is not estimable; the per-category agreement (the chance that another seed agrees with a "
        "seed that chose the label, with the dogs any seed put there) is then what can be read."
    ),
    "resilience-latest": (
        "Early (t<=5) minus late (t>=16) targets when only the latest race is damaged, with 95% intervals from "
        "bootstrap replicates over dogs. Held out: different dogs early and late (young vs seasoned). Same dogs: each "
        "dog's own early mean minus its late mean, over all its races; harm is not measured there (training races "
        "were fitted). A reading needs at least 100 dogs on each side."
    ),
    "resilience-by-step": (
        "Sensitivity to the latest race at each target step, on the same dogs (those with an early and a late "
        "target), with 95% intervals over dogs. A falling curve is the hypothesis: early predictions lean on the "
        "latest race more."
    ),
    "resilience-kinds": (
        "Held-out targets by step bucket at each kind's strongest severity: harm (change in race NLL; signed, so "
        "changes can cancel) and sensitivity (|change in log p|, which does not cancel). Structural kinds damage a "
        "share of the history (the realised share is in the table below), never all of it."
    ),
    "resilience-contrast": (
        "Early minus late for every scope, kind, severity and measure, with the dogs on each side. 'too few for a "
        "reading': fewer than 100 dogs on a side, or no interval; the numbers are shown, not read."
    ),
    "resilience-all": (
        "Every scope, kind, severity (with its unit) and step group. 'n/a': the model never saw those inputs in "
        "training (all missing), so damaging them measures nothing; 'changed': cases whose input the damage changed; "
        "'duplicates': cases to which an earlier kind had already given the same damaged input, counted there only; "
        "'share of history': the realised share of the dog's earlier races the damage touched."
    ),
    "divergence": (
        "A curve that levels off means both states have settled (often both saturated); one that keeps growing means "
        "the dogs' form keeps pushing them apart."
    ),
    "trend": "One point per night; tonight is the last. Race NLL of seed 0 (the ensemble where the night has it).",
    "nights": "Newest first.",
    "rows": "Counts from tonight's ingest.",
    "rows-check": " Check rows in = accepted + rejected + duplicates merged: ",
    "rejects": "Most common first; the rejected rows themselves are in the snapshot's rejects.parquet.",
}
"""Panel key -> what the panel shows and how to read it."""

VERDICT_RES: Mapping[str, str] = {
    "sensitivity:early more": ("Early predictions are more sensitive to the latest race: dropping it flips the top "
                               "pick in {e:.1%} of early races vs {l:.1%} of late ones (difference {d:+.3f}, "
                               "{lo:+.3f} to {hi:+.3f})."),
    "sensitivity:late more": ("Late predictions are more sensitive to the latest race: dropping it flips the top pick "
                              "in {e:.1%} of early races vs {l:.1%} of late ones (difference {d:+.3f}, {lo:+.3f} to "
                              "{hi:+.3f})."),
    "sensitivity:no clear difference": ("Early and late predictions are not clearly different in their sensitivity to "
                                        "the latest race: dropping it flips the top pick in {e:.1%} of early races vs "
                                        "{l:.1%} of late ones (difference {d:+.3f}, {lo:+.3f} to {hi:+.3f})."),
    "harm:early more": ("Early races also lose more race NLL ({e:+.4f} vs {l:+.4f}, difference {d:+.4f}, {lo:+.4f} "
                        "to {hi:+.4f})."),
    "harm:late more": ("Late races lose more race NLL ({e:+.4f} vs {l:+.4f}, difference {d:+.4f}, {lo:+.4f} to "
                       "{hi:+.4f})."),
    "harm:no clear difference": ("The loss in race NLL is not clearly larger early ({e:+.4f} vs {l:+.4f}, difference "
                                 "{d:+.4f}, {lo:+.4f} to {hi:+.4f})."),
    "within": ("On the same {n:,} dogs over all their races, dropping the latest race flips {e:.1%} of their early "
               "top picks vs {l:.1%} of their late ones (difference {d:+.3f}, {lo:+.3f} to {hi:+.3f}): {word}."),
    "none": "Too few early and late targets for the latest-race test.",
}
"""Sentences of the resilience verdict (early vs late, race NLL, scope 'dog', strongest severities)."""

REPRO_READING: Mapping[str, str] = {
    "churn": ("Two seeds pick different favourites in {churn:.1%} of {races:,} races, and a runner's probability "
              "varies across seeds by {spread:.3g} on average ({rel:.0%} of the mean probability)."),
    "churn-count": " By the favourite's race count, churn is {first:.1%} at race 1 and {last:.1%} from race 41.",
    "churn-status": (" Settled minus settling (not matched on race count): churn {churn:+.3f} [{churn_lo:+.3f}, "
                     "{churn_hi:+.3f}], spread {spread:+.2g} [{spread_lo:+.2g}, {spread_hi:+.2g}]: {reading}."),
    "status-none": "no clear difference in reproducibility after settling",
    "status-better": "the seeds agree more on settled races",
    "status-worse": "the seeds agree less on settled races",
    "status-mixed": "the two measures disagree on the direction",
    "ensemble": ("The ensemble of the {k} seeds scores race NLL {ens:.4f} against {mean:.4f} for a single seed on "
                 "average (seed 0: {seed0:.4f}), a difference of {diff:+.4f} [{lo:+.4f}, {hi:+.4f}] over {races:,} "
                 "races: {reading}."),
    "ensemble-gain": "the seeds' disagreement costs accuracy that averaging recovers",
    "ensemble-none": "no clear gain from averaging the seeds on these races",
    "kappa": "Seeds' agreement on status beyond chance: {items}.",
    "kappa-item": "kappa {kappa:.2f} [{lo:.2f}, {hi:.2f}] at race {step} ({n:,} dogs)",
    "kappa-none": ("Kappa is not estimable at {steps}: {reason}. Read the per-category agreement instead."),
    "cka-ok": ("The seeds learn the same representation: debiased CKA >= {low:.2f} at every race drawn (races "
               "{first}-{last}, {n_min:,} to {n_max:,} dogs per race; with one seed's dogs shuffled at most {perm:.3f})."),
    "cka-low": ("The seeds' representations differ: debiased CKA falls to {low:.2f} at race {at} (races {first}-{last}, "
                "{n_min:,} to {n_max:,} dogs per race; with one seed's dogs shuffled at most {perm:.3f})."),
}
"""Sentences reading the reproducibility tables (reports.sections.seeds)."""


# ---- honest comparison (issue 11): verdict, header and the cohorts section's words -------------------------

VERDICT: Mapping[str, str] = {
    "too_small_period": (
        "The held-out period is too small to compare: {races:,} races after the model set's cutoff, fewer than "
        "the {min_races:,} needed, so no comparison is made."
    ),
    "in_sample": (
        "The model set records no training date, so these comparisons may be in sample (the model may have been "
        "trained on the races it is scored on)."
    ),
    "absent": "The comparison by status at prediction time was not computed for this run.",
    "sizes": "{na:,} vs {nb:,} dogs, {wa:,} vs {wb:,} winners",
    "causes": " Associations, not causes.",
}
"""Sentences of the verdict (reports.headline.verdict_text) that are not page-one findings."""

PAGE_ONE: Mapping[str, str] = {
    "label_magnitude": "Magnitude (tanh) saturation",
    "label_plateau": "Information saturation: the abs-sum plateau",
    "label_reliance": "Reliance on the latest race",
    "label_comparison": "Settled vs settling races",
    "label_gap": "Gap to the market by race count",
    "label_resilience": "Resilience: the latest race damaged",
    "label_repro": "Reproducibility across seeds",
    "label_yardsticks": "Yardsticks",
    "magnitude_none": (
        "Magnitude (tanh) saturation does not occur on this model: the largest |h| is {max_abs} and {share} of "
        "{n} states have any unit at or above 0.95."
    ),
    "magnitude_some": (
        "Magnitude (tanh) saturation occurs on this model: the largest |h| is {max_abs} and {share} of {n} states "
        "have any unit at or above 0.95."
    ),
    "tanh_comparable": "The tanh-f groups are big enough to compare (a diagnostic; it does not decide the verdict).",
    "tanh_not_comparable": "The tanh-f groups are too small to compare.",
    "magnitude_absent": "Magnitude saturation: not computed for this run.",
    "plateau": (
        "The abs-sum does plateau: the median s rises from {s1} at race 1 to a long-run {level}, reaching 90% of it "
        "by race {r90} and 95% by race {r95}."
    ),
    "plateau_not_reached": "The median s has not yet levelled off at {level} (neither 90% nor 95% of it reached).",
    "km_grid": (
        "The median time to plateau (Kaplan-Meier) is race {km} at the rule's defaults and races {lo}-{hi} across "
        "its (w, delta, k) grid: the tolerance sets that number."
    ),
    "km": "The median time to plateau (Kaplan-Meier) is race {km} at the rule's defaults.",
    "plateau_absent": "The abs-sum plateau: not computed for this run.",
    "reliance": (
        "Each race rewrites {u} of the state by race {r} (write fraction, 1 - mean z of the update gate), {way} "
        "{u1} at race {r1}."
    ),
    "reliance_absent": "The write fraction by race: not computed for this run.",
    "lead_robust": "A robust association between information saturation and the model's {what}:",
    "lead_fragile": "An association that does not hold up across the checks, for the model's {what}:",
    "lead_none": "No robust association between information saturation and the model's {what}:",
    "main": "{a} minus {b} races at the same step {diff} {ci} ({na} vs {nb} dogs);",
    "within": "within the same dogs, after minus before their plateau (step fixed effects), {diff} {ci} ({n} dogs);",
    "within_small": "within the same dogs, too few to compare ({sizes});",
    "grid": "{zero} of {n} moves of (w, delta, k) give an interval that includes 0.",
    "grid_small": " ({k} more too small to compare).",
    "grid_none": "No move of (w, delta, k) had groups big enough to compare ({n} tried).",
    "composition": "The market's own log-loss differs by {diff} {ci} between the same groups",
    "composition_flagged": ", so the groups differ mostly in who they are.",
    "composition_ok": ", less than the model's difference: the groups hold similar dogs for the market.",
    "not_comparable": (
        "The {a} and {b} groups are below the minimum sizes to compare ({sizes}), so no interval is given."
    ),
    "control": "Negative control (step-1 races, predicted from h_0 = 0 for every dog): {diff} {ci}, {reading}.",
    "control_ok": "as it should be",
    "control_bad": "which should include 0: read the comparison with care",
    "family": "The verdict's family: {n} tests that produced an interval. Associations, not causes.",
    "family_holm": (
        "The verdict's family: {n} tests that produced an interval; {k} of them {verb} 0 after Holm's "
        "adjustment{which}. "
        "Associations, not causes."
    ),
    "gap_falls": (
        "The model's deficit to the market shrinks with history: {d0} {ci0} nats per runner at {b0}, {d1} "
        "{ci1} at {b1} ({ratio} of it)."
    ),
    "gap_flat": (
        "The model's gap to the market: {d0} {ci0} nats per runner at {b0}, {d1} {ci1} at {b1}; the "
        "intervals overlap."
    ),
    "gap_absent": "The gap to the market by race count: not computed for this run.",
    "res_lead": "With only the latest race dropped, early targets (races 1-5) against late ones (16 on):",
    "res_flip": "{reading}: favourite flips {early} vs {late}, {diff} {ci};",
    "res_harm": "{reading}: change in race NLL {early} vs {late}, {diff} {ci}.",
    "resilience_absent": "The latest-race test: not computed for this run.",
    "churn": "Seeds pick different favourites in {churn} of races",
    "spread": " (prediction spread {spread})",
    "ensemble": "The {k} mean's race NLL is {e} against {s0} for seed 0 ({diff}).",
    "kappa": "Agreement on settled/settling status (Fleiss' kappa): {kappa}.",
    "kappa_text": "Agreement on settled/settling status (Fleiss' kappa): {kappa}.",
    "repro_absent": "Reproducibility across seeds: not computed for this run.",
    "scope": (
        "The step-indexed comparisons use {dd} of {d} dogs (debut observed) and {dr} of {r} runners, in {races} "
        "races."
    ),
    "yardsticks": "Race NLL on the held-out races: {parts}.",
}
"""Page one's sentences (reports.headline): each is filled from numbers in the headline record."""

METRIC_NAMES: Mapping[str, str] = {
    "gap_vs_market": "gap to the market (per-runner log-loss, model minus market)",
    "runner_log_loss": "per-runner log-loss",
    "brier": "Brier score",
    "concordance": "within-race concordance",
    "hit_rate": "winner hit rate",
    "log_loss": "per-runner log-loss",
    "auc": "AUC",
}
"""Metric key -> its name in words (race NLL and per-runner log-loss are never the same name)."""

HIGHER_IS_BETTER = frozenset({"concordance", "hit_rate", "auc"})
"""Metrics where a larger value is better (for the others, lower is better)."""

COHORT_EXPLAIN: Mapping[str, str] = {
    "checks": (
        "Each dot is a difference a - b in nats per runner with its 95% interval from a bootstrap over dogs: the main "
        "comparison (settled minus settling races at the same step), the same dogs after minus before their "
        "plateau, the main comparison at each move of the rule's (w, delta, k), the market's own log-loss between "
        "the same groups (if it differs as much, the groups differ in who they are) and the negative control. "
        "Checks below the minimum sizes are not drawn."
    ),
    "checks-none": "No check had groups big enough to compare: every one is listed with its sizes below.",
    "checks-table": "Every check with its sizes; one below the minimum sizes says 'too small to compare', never an interval.",
    "status": (
        "The {what} of races grouped by the status the model had before each race (settled: plateau confirmed by "
        "t-1; settling: enough races, no plateau yet), by races already run; dots are estimates, whiskers 95% "
        "intervals from a bootstrap over dogs. {better}"
    ),
    "status-sizes": "Sizes over all steps: dogs, runners, winners and the effective number of dogs of each group.",
    "dose": (
        "How the gap to the market moves per standard deviation of each score the model had before the race "
        "(write fraction u, movement m, abs-sum s), with step fixed effects, on {n:,} runners: a positive slope means "
        "a worse gap where the score is higher."
    ),
    "dose-none": "No score had enough runners for a slope.",
    "calibration": (
        "Predicted win probability (x) against how often those runners won (y), one line for the model and one for "
        "the market, on held-out races; hover for the runners in each bin. On the diagonal is well calibrated."
    ),
    "too-small-period": (
        "The held-out period is too small to compare: {races:,} races (fewer than {min_races:,}). The comparisons "
        "are not shown."
    ),
}
"""Panel key -> what a panel of the comparison section shows and how to read it."""
