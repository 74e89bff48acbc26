"""Where everything lives under the store root (GRUVIZ_HOME, default ./gruviz-data).

    <root>/forms/<snapshot_id>/{runs.parquet, rejects.parquet, manifest.json}
    <root>/forms/LATEST                         text: newest snapshot id
    <root>/features/<snapshot_id>/sequences.npz raw (unnormalised) ragged sequences
    <root>/models/<set_id>/manifest.json        the K seeds trained together
    <root>/models/<set_id>/seed_<k>/...         checkpoint, config, features, curve, metrics
    <root>/models/CURRENT                       text: current model set id
    <root>/runs/<run_id>/                       a published run: states.zarr, stats/, eval/, run.json
    <root>/runs/.tmp/<run_id>.<nonce>/          a run being written (never read by readers)
    <root>/runs/LATEST                          text: newest published run id
    <root>/reports/                             published HTML (the reports dir can be set apart)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gruviz_core.errors import StoreError

__all__ = ["StoreLayout", "RunLayout", "STATS_TABLES", "EVAL_TABLES"]


@dataclass(frozen=True)
class StoreLayout:
    """Paths of the store's parts; creates nothing."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> StoreLayout:
        return cls(Path(root).expanduser().resolve())

    @property
    def forms(self) -> Path:
        return self.root / "forms"

    def snapshot(self, snapshot_id: str) -> Path:
        return self.forms / snapshot_id

    def features(self, snapshot_id: str) -> Path:
        return self.root / "features" / snapshot_id

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_set(self, set_id: str) -> Path:
        return self.models / set_id

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    @property
    def runs_tmp(self) -> Path:
        return self.runs / ".tmp"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


STATS_TABLES = ("dog_step", "dog", "dog_seed", "unit", "step", "plateau")
"""Tables the stats stage writes under <run>/stats/."""
EVAL_TABLES = ("cohort_metrics", "calibration", "status_compare", "status_effect", "dose_response", "sensitivity",
               "repro", "cka", "resilience", "resilience_contrast", "divergence")
"""Tables the evaluate stage writes under <run>/eval/."""


@dataclass(frozen=True)
class RunLayout:
    """Every path inside one run directory (temporary or published), named once.

        states.zarr/  plan.json  meta.json  blocks/<b>.json  run.json  _COMPLETE
        stats/<table>.parquet  stats/summary.json  eval/<table>.parquet  eval/headline.json
    """

    run_dir: Path

    @classmethod
    def at(cls, run_dir: str | Path) -> RunLayout:
        return cls(Path(run_dir))

    @property
    def states(self) -> Path:
        return self.run_dir / "states.zarr"  # storage.states.STATES

    @property
    def plan(self) -> Path:
        return self.run_dir / "plan.json"

    @property
    def meta(self) -> Path:
        return self.run_dir / "meta.json"

    @property
    def blocks(self) -> Path:
        return self.run_dir / "blocks"

    def block(self, index: int) -> Path:
        return self.blocks / f"{index}.json"

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def complete(self) -> Path:
        return self.run_dir / "_COMPLETE"

    @property
    def stats(self) -> Path:
        return self.run_dir / "stats"

    @property
    def eval(self) -> Path:
        return self.run_dir / "eval"

    @property
    def summary(self) -> Path:
        return self.stats / "summary.json"

    @property
    def headline(self) -> Path:
        return self.eval / "headline.json"

    def table(self, name: str) -> Path:
        """<run>/stats/<name>.parquet or <run>/eval/<name>.parquet, by the table's stage."""
        if name in STATS_TABLES:
            return self.stats / f"{name}.parquet"
        if name in EVAL_TABLES:
            return self.eval / f"{name}.parquet"
        raise StoreError(f"{name!r} is not a run table; known: {', '.join(STATS_TABLES + EVAL_TABLES)}")
