"""One Arrow schema per run table (docs/ARCHITECTURE.md section 4): the contract between the stages
that write a run's tables and everything that reads them.

A table on disk must have every column of its schema (more columns may be added, none removed); the
reader (`storage.results`) checks this once, so the report trusts the columns instead of testing
them. Types are checked by kind: an integer column may be stored in any integer width, a float
column in any float or integer width (a nullable step is a float with NaN), text as string or
dictionary of strings, and an empty table's all-null columns pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

__all__ = ["TABLES", "DOG_STEP_COLUMNS", "schema_problems"]

_I, _F, _S, _B = pa.int64(), pa.float64(), pa.string(), pa.bool_()


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, kind) for name, kind in fields])


TABLES: Mapping[str, pa.Schema] = {
    "dog_step": _schema(
        ("dog_index", _I), ("step", _I), ("layer", _I), ("abs_sum", _F), ("s", _F),
        ("f090", _F), ("f095", _F), ("f099", _F), ("max_abs", _F), ("move", _F), ("write", _F),
    ),
    # Per-row summaries of every seed and layer (DESIGN section 5); comparisons read these, never the states.
    "row_summary": _schema(
        ("seed", _I), ("layer", _I), ("dog_index", _I), ("step", _I), ("s", _F), ("f090", _F), ("f095", _F),
        ("f099", _F), ("max_abs", _F), ("move", _F), ("write", _F),
    ),
    "dog": _schema(
        ("dog_index", _I), ("dog_id", _S), ("dog_name", _S), ("n_steps", _I), ("layer", _I),
        ("plateau_step", _F), ("censored", _B), ("mean_s", _F), ("final_s", _F), ("mean_f095_after", _F),
        ("cohort", _S), ("cohort_layer", _B), ("f_tail", _F), ("debut_observed", _B),
    ),
    "unit": _schema(
        ("seed", _I), ("layer", _I), ("gate", _S), ("unit", _I), ("left", _F), ("right", _F),
        ("variance", _F), ("mean_abs", _F), ("dead", _B), ("always_saturated", _B),
    ),
    "step": _schema(
        ("layer", _I), ("step", _I), ("cohort", _S), ("n", _I), ("s_q25", _F), ("s_q50", _F), ("s_q75", _F),
        ("f095_q25", _F), ("f095_q50", _F), ("f095_q75", _F),
    ),
    "plateau": _schema(("layer", _I), ("step", _I), ("at_risk", _I), ("plateaued", _I), ("survival", _F)),
    "cohort_metrics": _schema(
        ("cohort", _S), ("metric", _S), ("value", _F), ("lo", _F), ("hi", _F), ("n_dogs", _I), ("n_rows", _I),
        ("source", _S),
    ),
    "calibration": _schema(
        ("cohort", _S), ("bin", _I), ("lo", _F), ("hi", _F), ("p_mean", _F), ("won_rate", _F), ("n", _I), ("source", _S),
    ),
    # Scored races grouped by saturation status at prediction time (from h_{t-1}), within step strata.
    "status_compare": _schema(
        ("stratum", _S), ("group", _S), ("metric", _S), ("value", _F), ("lo", _F), ("hi", _F), ("n_dogs", _I),
        ("n_rows", _I), ("n_winners", _I), ("n_eff_dogs", _F),
    ),
    # Comparisons a - b: main, negative_control, within_dog, by_dog_cohort, dose_trend.
    "status_effect": _schema(
        ("comparison", _S), ("metric", _S), ("a", _S), ("b", _S), ("diff", _F), ("lo", _F), ("hi", _F),
        ("n_dogs_a", _I), ("n_dogs_b", _I), ("n_winners_a", _I), ("n_winners_b", _I), ("comparable", _B),
        ("excludes_zero", _B), ("note", _S),
    ),
    "dose_response": _schema(
        ("score", _S), ("decile", _I), ("score_lo", _F), ("score_hi", _F), ("score_mid", _F), ("value", _F),
        ("lo", _F), ("hi", _F), ("metric", _S), ("n_rows", _I), ("n_dogs", _I),
    ),
    # The main effect at each grid point of the rule's thresholds and plateau parameters.
    "sensitivity": _schema(
        ("param", _S), ("value", _F), ("n_dogs_a", _I), ("n_dogs_b", _I), ("n_rows_a", _I), ("n_rows_b", _I),
        ("diff", _F), ("lo", _F), ("hi", _F), ("comparable", _B),
    ),
    # Spread and churn by race count and status, race NLL of each seed and the ensemble, status kappa at fixed races.
    "repro": _schema(
        ("metric", _S), ("by", _S), ("scope", _S), ("step", _F), ("value", _F), ("lo", _F), ("hi", _F), ("n", _I),
        ("n_of", _S), ("note", _S),
    ),
    "cka": _schema(
        ("step", _I), ("seed_a", _I), ("seed_b", _I), ("n", _I), ("cka", _F), ("lo", _F), ("hi", _F),
        ("cka_perm", _F), ("cka_biased", _F),
    ),
    # Resilience (gruviz_core.resilience): scope dog / within-dog / feed, kind, relative severity, step group;
    # sensitivity (flip_rate, abs_dlogp, kl, state_divergence) and harm (d_nll, held-out races only).
    "resilience": _schema(
        ("scope", _S), ("perturbation", _S), ("family", _S), ("severity", _F), ("severity_unit", _S), ("level", _I),
        ("bucket", _S), ("status", _S), ("n_cases", _I), ("n_changed", _I), ("n_duplicate", _I),
        ("changed_share", _F), ("damage_share", _F), ("n_dogs", _I),
        *((f"{m}{s}", _F) for m in ("d_nll", "flip_rate", "abs_dlogp", "kl", "state_divergence")
          for s in ("", "_lo", "_hi")),
    ),
    "resilience_contrast": _schema(
        ("scope", _S), ("perturbation", _S), ("family", _S), ("severity", _F), ("level", _I), ("contrast", _S),
        ("measure", _S), ("role", _S), ("a", _S), ("b", _S), ("value_a", _F), ("value_b", _F), ("diff", _F),
        ("lo", _F), ("hi", _F), ("n_a", _I), ("n_b", _I), ("n_dogs_a", _I), ("n_dogs_b", _I), ("n_boot", _I),
        ("reading", _S),
    ),
    "divergence": _schema(("pair", _S), ("dog_a", _S), ("dog_b", _S), ("step", _I), ("distance", _F)),
    # The probe atlas (gruviz_core.probes): out-of-sample probe score (R² or AUC) per seed, layer, quantity and
    # race-count bucket, with the control task's score and the selectivity (score - control), intervals over dogs.
    "probes": _schema(
        ("quantity", _S), ("metric", _S), ("seed", _I), ("layer", _I), ("bucket", _S), ("score", _F), ("lo", _F),
        ("hi", _F), ("control", _F), ("control_lo", _F), ("control_hi", _F), ("selectivity", _F), ("sel_lo", _F),
        ("sel_hi", _F), ("n_dogs", _I), ("n_rows", _I), ("note", _S),
    ),
    "unit_atlas": _schema(
        ("seed", _I), ("layer", _I), ("unit", _I), ("quantity", _S), ("rho", _F), ("n_rows", _I), ("rank", _I),
    ),
    # The probe's sampled rows (store row, dog, race count) and each quantity there (NaN: unknown or absent), for
    # the explorer's scatter of a unit against the quantity it tracks best (gruviz_core.probes.QUANTITIES).
    "probe_rows": _schema(
        ("dog_index", _I), ("step", _I), ("row", _I), ("starts", _F), ("win_rate", _F), ("mean_pos_3", _F),
        ("mean_pos_5", _F), ("log_days_since", _F), ("last_box", _F), ("last_distance_m", _F), ("grade_level", _F),
        ("last_won", _F), ("last_placed", _F), ("track_change", _F), ("market_last", _F), ("market_next", _F),
    ),
    # Input drift (gruviz_core.drift): per model input, the night's rows against the set's training window.
    "drift": _schema(
        ("input", _S), ("part", _S), ("kind", _S), ("n_ref", _I), ("n_cur", _I), ("psi", _F), ("ks", _F), ("ks_p", _F),
        ("missing_ref", _F), ("missing_cur", _F), ("clipped_ref", _F), ("clipped_cur", _F), ("unknown_ref", _F),
        ("unknown_cur", _F), ("unseen_cur", _F), ("n_unseen", _I), ("unseen_levels", _S), ("flagged", _B),
        ("reason", _S),
    ),
}
"""Table name -> the columns every stored copy has (the name is the file's stem under stats/ or eval/)."""

DOG_STEP_COLUMNS: tuple[str, ...] = tuple(TABLES["dog_step"].names)
"""The per-dog-step columns read back (the table is the run's largest: `delta` is left on disk)."""


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_null(t):
        return "null"
    return str(t)


_ACCEPTS = {"int": {"int"}, "float": {"int", "float"}, "str": {"str"}, "bool": {"bool"}}


def schema_problems(name: str, found: pa.Schema) -> list[str]:
    """What a stored table lacks against its schema: one line per missing or mistyped column; [] when it conforms."""
    expected = TABLES[name]
    have = {f.name: f.type for f in found}
    out = []
    for field in expected:
        if field.name not in have:
            out.append(f"column {field.name!r} is missing")
            continue
        got, want = _kind(have[field.name]), _kind(field.type)
        if got != "null" and got not in _ACCEPTS[want]:
            out.append(f"column {field.name!r} is {have[field.name]}, expected {want}")
    return out
