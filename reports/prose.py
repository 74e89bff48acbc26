"""The report's words, apart from its code: glossary, section intros, panel explanations, verdict sentences.

Keys are section ids (`INTRO`) and panel keys (`EXPLAIN`); templates use str.format fields.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "GLOSSARY", "INTRO", "EXPLAIN", "VERDICT", "VERDICT_RES", "CKA_READING", "MISSING", "STATES_HOW", "METRIC_NAMES",
    "HIGHER_IS_BETTER", "COMPARISONS", "COHORT_EXPLAIN",
]

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
        "Dogs with too few races to tell are 'undecided' (right-censored), not 'unsaturated'. The median time to "
        "plateau is the Kaplan-Meier median ('not reached' while more than half the dogs have not plateaued).",
    ),
    (
        "Cohorts",
        "A versioned rule with absolute thresholds: saturated, a plateau exists and the tail F_0.95 reaches theta; "
        "unsaturated, the tail F stays below low; partial, in between; undecided, too few races. The rule may find "
        "no saturated dog at all. The rule, its version and parameters are in the header.",
    ),
    (
        "Status at prediction time",
        "A race is predicted from the state before it, h_{t-1}: its group is the status the model had then "
        "(plateau reached by t-1, tail F so far), never the dog's later career.",
    ),
    (
        "Race NLL vs per-runner log-loss",
        "Race NLL is the negative log of the probability given to each race's winner (what the model is trained "
        "on); per-runner log-loss scores every runner's win/lose probability. They are different numbers.",
    ),
)
"""(term, definition), shown at the end of the page."""

MISSING = "Not computed for this run: {rel} is missing."
"""The note of a panel whose input table the run lacks."""

INTRO: Mapping[str, str] = {
    "states": (
        "What the model's memory looks like inside two dogs: every hidden unit (rows) after every race (columns). "
        "Red is near +1, blue near -1, white near 0; a dog whose columns turn solid red/blue has saturated."
    ),
    "abs-sum": (
        "The notebook's curve: how large the hidden state is after each race. s is the abs-sum of the state "
        "divided by the number of units (0 = all units at zero, 1 = every unit pinned at +/-1)."
    ),
    "saturation": (
        "The three kinds of saturation (see the glossary at the end): magnitude (F_tau by race), gates "
        "(z and r stuck at 0 or 1) and spectral (effective dimension), plus how long dogs take to plateau."
    ),
    "cohorts": (
        "Is a saturated hidden state associated with worse (or better) predictions? Races after the model set's "
        "training cutoff only, each grouped by the saturation status the model had when it predicted the race "
        "(nothing after the race decides the group), compared within bands of the step and against the market on "
        "the same races, with 95% intervals from a bootstrap over dogs. Associations, not causes."
    ),
    "reproducibility": (
        "Would another training seed tell the same story? The K seed models are compared on their states "
        "(debiased CKA), their predictions (spread, top-pick churn) and their cohort labels (Fleiss' kappa among "
        "dogs with enough races to be decided)."
    ),
    "resilience": (
        "How much do data problems hurt, and when? Target races at several steps t of a career are re-scored after "
        "the history before t is damaged (latest races removed, random races removed, recent order shuffled, noise "
        "on observed times or prices, values blanked, races duplicated, oldest races removed), each at severities "
        "that grow with the damage. Scope 'dog': only this dog's data is corrupted and the other runners keep their "
        "stored scores, which is exact for that fault. Scope 'feed': every runner of the race is damaged and the "
        "race re-scored. Perturbations that changed nothing are counted as no-ops and left out of the means."
    ),
    "divergence": (
        "From the same initial state, how far apart two dogs' hidden states move race by race (Euclidean distance)."
    ),
    "trend": (
        "Tonight against previous nights: is the model drifting, is the market catching up, are more dogs saturating?"
    ),
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
    "exemplars": " the most saturated dog (left) and the least saturated dog (right) with enough races to tell.",
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
        "Shaded bands are the middle half (25th-75th percentile) of each cohort's dogs at each race, the line inside "
        "is the median; thin lines are the two heatmap dogs, a diamond marks each one's plateau; the dashed vertical "
        "line is the Kaplan-Meier median time to plateau (absent when not reached). Bands stop where fewer than {min_dogs} dogs have raced that "
        "often."
    ),
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
        "with at least that many races (1 = the same representation up to rotation and scale, 0 = unrelated at any n); "
        "dotted: the same with one seed's dogs shuffled, what unrelated states give. Hypothesis tested: seeds agree "
        "more once states settle. The curve stops where fewer than 200 dogs remain; the right panel draws n."
    ),
    "repro": (
        "prob_spread: mean sample std (ddof=1) of the seeds' win probabilities for the same runner; top_pick_churn: "
        "share of races where two seeds pick different winners (symmetric, averaged over pairs); fleiss_kappa: "
        "agreement of all seeds' cohort labels beyond chance among decided dogs; agreement: chance that another seed "
        "agrees with a seed that put a dog in that cohort (n = dogs any seed put there). Hypothesis tested: the "
        "cohorts are a property of the data, not of one seed; kappa near 1 supports it, near 0 refutes it."
    ),
    "resilience-d_nll": (
        "Change in race NLL: how much worse (positive) the race's softmax predicts the winner after the damage, "
        "mean over damaged cases with a 95% bootstrap interval over dogs, at each kind's strongest severity. "
        "Hypothesis tested (the notebook's): early targets (t<=5) move more than late ones (t>=16)."
    ),
    "resilience-flip_rate": (
        "Top-pick flip rate: share of races whose favourite under the model changes after the damage, with a 95% "
        "bootstrap interval over dogs. Same hypothesis: the early bars should be taller."
    ),
    "resilience-contrast": (
        "Within the same kind and severity: early (t<=5) minus late (t>=16) targets, and dogs whose plateau was not "
        "yet confirmed by t-1 minus those whose was, each with a 95% interval from the same bootstrap replicates. "
        "Structural kinds remove a larger share of a short history, which is part of what 'early' means here."
    ),
    "resilience-all": (
        "Every scope, kind, severity (with its unit), target-step bucket and plateau status; 'n/a': the model never "
        "saw those inputs in training (all missing), so damaging them measures nothing; 'share changed': cases "
        "whose input the perturbation changed at all."
    ),
    "divergence": (
        "A curve that levels off means both states have settled (often both saturated); one that keeps growing means "
        "the dogs' form keeps pushing them apart."
    ),
    "trend": "One point per night; tonight is the last.",
    "nights": "Newest first.",
    "rows": "Counts from tonight's ingest.",
    "rows-check": " Check rows in = accepted + rejected + duplicates merged: ",
    "rejects": "Most common first; the rejected rows themselves are in the snapshot's rejects.parquet.",
}
"""Panel key -> what the panel shows and how to read it."""

VERDICT_RES: Mapping[str, str] = {
    "holds": ("On this model the notebook's hypothesis holds: early targets lose more race NLL than late ones in {up} "
              "of {n} kinds (late more in {down}); median ratio early/late {ratio:.2g}."),
    "refuted": ("On this model the data refutes the notebook's hypothesis: late targets lose more race NLL in {down} of "
                "{n} kinds (early more in {up}); median ratio early/late {ratio:.2g}."),
    "mixed": ("On this model the hypothesis is not clearly supported: early targets lose more race NLL in {up} of {n} "
              "kinds, late ones in {down}, the rest within noise; median ratio early/late {ratio:.2g}."),
    "none": "Too few early and late targets to test the notebook's hypothesis.",
}
"""Sentences of the resilience verdict (early vs late, race NLL, scope 'dog', strongest severities)."""

CKA_READING: Mapping[str, str] = {
    "rising": ("The data supports it: CKA rises from {early:.2f} (races 1-5) to {late:.2f} (race 20 on), beyond the "
               "intervals, with n >= {n} at every step and the shuffled baseline within {perm:.2f} of 0."),
    "flat": ("The data does not show a clear rise: CKA {early:.2f} at races 1-5 vs {late:.2f} from race 20, "
             "intervals overlapping (n >= {n}; shuffled baseline within {perm:.2f} of 0)."),
}
"""Sentences reading the CKA curve."""


# ---- honest comparison (issue 11): verdict, header and the cohorts section's words -------------------------

VERDICT: Mapping[str, str] = {
    "too_small_period": (
        "The held-out period is too small to compare: {races:,} races after the model set's cutoff, fewer than "
        "the {min_races:,} needed, so no comparison is made tonight."
    ),
    "in_sample": (
        "The model set records no training date, so these comparisons may be in sample (the model may have been "
        "trained on the races it is scored on)."
    ),
    "share": "{share} of {dogs:,} dogs have saturated hidden states under rule {rule}.",
    "none_saturated": "The rule ({rule}) finds no saturated dog among {dogs:,} dogs; that is a finding, not an error.",
    "plateau": " Median time to plateau (Kaplan-Meier): race {race}.",
    "plateau_not_reached": " Median time to plateau (Kaplan-Meier): not reached.",
    "associated": (
        "Races predicted from a {a} state are associated with a {word} {what} than races from a{n} {b} state at "
        "the same step: {diff:+.3g} ({ci}; {sizes})."
    ),
    "no_association": (
        "No association detected at this size between saturation status at prediction time and {what}: "
        "{a} vs {b} {diff:+.3g} ({ci}; {sizes})."
    ),
    "too_small": "Too small to compare {a} with {b} races at prediction time ({sizes}): no verdict tonight.",
    "absent": "The comparison by saturation status at prediction time was not computed for this run.",
    "ci": "95% interval {lo:+.3g} to {hi:+.3g}",
    "sizes": "{na:,} vs {nb:,} dogs, {wa:,} vs {wb:,} winners",
    "comparisons": (
        " Associations, not causes; {n} comparisons were made tonight, so about one in twenty intervals would "
        "exclude 0 by chance alone."
    ),
    "causes": " Associations, not causes.",
    "race_nll": "Race NLL: model {m:.4g}, market {k:.4g}, uniform {u:.4g}.",
    "race_nll_no_market": "Race NLL: model {m:.4g}, uniform {u:.4g} (no market prices).",
}
"""Sentences of the verdict (reports.headline.verdict_text): the page, the email and the flow's summary."""

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

COMPARISONS: Mapping[str, str] = {
    "main": "main: status at prediction time, step-matched",
    "negative_control": "negative control: step-1 races by the dog's eventual cohort (selection, not the state)",
    "within_dog": "within dog: after vs before the plateau",
    "by_dog_cohort": "by dog cohort (includes selection)",
    "dose_trend": "dose trend: slope over the saturation score",
}
"""status_effect comparison -> its label."""

COHORT_EXPLAIN: Mapping[str, str] = {
    "sizes": (
        "How many dogs the rule puts in each cohort, how long their careers are and how many have an observed debut "
        "(a dog first seen mid-career starts at h_0 = 0 like a debutant)."
    ),
    "tail-f": (
        "The distribution of tail F_0.95 over the {n:,} decided dogs (share of dogs at or below each value); "
        "{zero} have tail F exactly 0. Dashed lines: the rule's thresholds (unsaturated below low, saturated at or "
        "above theta once a plateau is reached)."
    ),
    "none-saturated": "The rule ({rule}) finds no saturated dog: a finding, not an error. The distribution shows why.",
    "status": (
        "The {what} of races grouped by the saturation status the model had before each race, within bands of the "
        "step (races already run); dots are estimates, whiskers 95% intervals from a bootstrap over dogs. {better}"
    ),
    "status-sizes": "Sizes over all steps: dogs, races, winners and the effective number of dogs of each group.",
    "effects": (
        "Each comparison a - b with its 95% interval. The negative control compares step-1 races, all predicted "
        "from h_0 = 0: any difference there is selection of dogs, not the state. Rows below the minimum group size "
        "say 'too small to compare' instead of an interval."
    ),
    "dose": "The {what} by decile of s_{{t-1}}, the saturation score the model had before the race. {trend}",
    "dose-trend": "Trend: {slope:+.3g} per unit of s (95% interval {lo:+.3g} to {hi:+.3g}, {n:,} races).",
    "dose-no-trend": "No trend estimate for this run.",
    "sensitivity": "The main effect and its interval when one parameter of the rule moves (the rest at default).",
    "sens-robust": (
        "The grid moved the groups (sizes differ across points) and every interval overlaps the main one: flat "
        "means robust here."
    ),
    "sens-static": (
        "The grid did not move the groups (the same sizes at every point), so this panel cannot show robustness."
    ),
    "sens-moves": (
        "The grid moved the groups, and at {n} point(s) ({where}) the interval does not overlap the main one: the "
        "effect depends on the rule's parameters."
    ),
    "sens-no-main": "No main effect to compare the grid with.",
    "calibration": (
        "Predicted win probability (x) against how often those runners won (y), one line for the model and one for "
        "the market, on held-out races; hover for the runners in each bin. On the diagonal is well calibrated."
    ),
    "by-cohort": (
        "Metrics of the dogs in each cohort. The cohort is decided by the dog's whole career, so this includes "
        "selection (longer careers, who wins) and is not the comparison above."
    ),
    "too-small-period": (
        "The held-out period is too small to compare: {races:,} races (fewer than {min_races:,}). The comparisons "
        "are not shown."
    ),
}
"""Panel key -> what a panel of the cohorts section shows and how to read it."""
