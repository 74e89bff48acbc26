"""Where everything lives under the store root (GRUVIZ_HOME, default ./gruviz-data).

    <root>/forms/<snapshot_id>/{runs.parquet, rejects.parquet, manifest.json}
    <root>/forms/LATEST                         text: newest snapshot id
    <root>/features/<snapshot_id>/sequences.zarr/ raw (unnormalised) ragged sequences (storage.sequences)
    <root>/models/<set_id>/manifest.json        the K seeds trained together
    <root>/models/<set_id>/seed_<k>/...         checkpoint, config, features, curve, metrics
    <root>/models/CURRENT                       text: current model set id
    <root>/runs/<run_id>/                       a published run: states.zarr, stats/, eval/, run.json, _COMPLETE
    <root>/runs/.tmp/<run_id>.<nonce>/          a run being written (never read by readers); local stores only
    <root>/runs/LATEST                          text: newest published run id

The root is a local directory or any fsspec URL (storage.store). On object storage a run is written
under its own prefix runs/<run_id>/ directly (no rename there): readers only follow LATEST and only
list runs holding _COMPLETE, which is written last.
    <root>/reports/                             published HTML (the reports dir can be set apart)
"""

from __future__ import annotations

from dataclasses import dataclass

from gruviz_core.errors import StoreError
from storage.store import StorePath, location

__all__ = ["StoreLayout", "RunLayout", "STATS_TABLES", "EVAL_TABLES"]


@dataclass(frozen=True)
class StoreLayout:
    """Paths of the store's parts; creates nothing."""

    root: StorePath
    """The store root: an absolute local path, or a UPath for an fsspec URL."""

    @classmethod
    def at(cls, root: str | StorePath) -> StoreLayout:
        return cls(location(root))

    @property
    def forms(self) -> StorePath:
        return self.root / "forms"

    def snapshot(self, snapshot_id: str) -> StorePath:
        return self.forms / snapshot_id

    def features(self, snapshot_id: str) -> StorePath:
        return self.root / "features" / snapshot_id

    @property
    def models(self) -> StorePath:
        return self.root / "models"

    def model_set(self, set_id: str) -> StorePath:
        return self.models / set_id

    @property
    def runs(self) -> StorePath:
        return self.root / "runs"

    def run(self, run_id: str) -> StorePath:
        return self.runs / run_id

    @property
    def runs_tmp(self) -> StorePath:
        return self.runs / ".tmp"

    @property
    def reports(self) -> StorePath:
        return self.root / "reports"


STATS_TABLES = ("dog_step", "row_summary", "dog", "dog_seed", "unit", "step", "plateau")
"""Tables the stats stage writes under <run>/stats/."""
EVAL_TABLES = ("cohort_metrics", "calibration", "status_compare", "status_effect", "dose_response", "sensitivity",
               "repro", "cka", "resilience", "resilience_contrast", "divergence", "probes", "unit_atlas", "probe_rows",
               "drift")
"""Tables the evaluate stage (and the probe stage: probes, unit_atlas, probe_rows; the drift stage: drift) writes under
<run>/eval/."""


@dataclass(frozen=True)
class RunLayout:
    """Every path inside one run directory (temporary or published), named once.

        states.zarr/  plan.json  meta.json  blocks/<b>.json  run.json  _COMPLETE
        stats/<table>.parquet  stats/summary.json  eval/<table>.parquet  eval/headline.json  eval/probe.json
        eval/drift.json  eval/model_change.json  eval/determinism.json
    """

    run_dir: StorePath
    """The run's directory (local) or prefix (object storage)."""

    @classmethod
    def at(cls, run_dir: str | StorePath) -> RunLayout:
        return cls(location(run_dir))

    @property
    def states(self) -> StorePath:
        return self.run_dir / "states.zarr"  # storage.states.STATES

    @property
    def plan(self) -> StorePath:
        return self.run_dir / "plan.json"

    @property
    def meta(self) -> StorePath:
        return self.run_dir / "meta.json"

    @property
    def blocks(self) -> StorePath:
        return self.run_dir / "blocks"

    def block(self, index: int) -> StorePath:
        return self.blocks / f"{index}.json"

    @property
    def run_json(self) -> StorePath:
        return self.run_dir / "run.json"

    @property
    def owner(self) -> StorePath:
        """Object storage only: created exclusively by begin_run, so one writer owns the run's prefix."""
        return self.run_dir / "_WRITER"

    @property
    def complete(self) -> StorePath:
        return self.run_dir / "_COMPLETE"

    @property
    def stats(self) -> StorePath:
        return self.run_dir / "stats"

    @property
    def eval(self) -> StorePath:
        return self.run_dir / "eval"

    @property
    def summary(self) -> StorePath:
        return self.stats / "summary.json"

    @property
    def headline(self) -> StorePath:
        return self.eval / "headline.json"

    @property
    def probe_record(self) -> StorePath:
        """The probe stage's record: what it sampled and how long it took, or why the atlas is missing."""
        return self.eval / "probe.json"

    @property
    def drift_record(self) -> StorePath:
        """The drift stage's record: the windows compared, their rows, the flagged inputs, or why it failed."""
        return self.eval / "drift.json"

    @property
    def model_change_record(self) -> StorePath:
        """The model-change stage's record: whether tonight's set is last night's, and what moved if not."""
        return self.eval / "model_change.json"

    @property
    def determinism_record(self) -> StorePath:
        """The determinism watch's record: the watched dogs compared with last night's run, and any that differ."""
        return self.eval / "determinism.json"

    def table(self, name: str) -> StorePath:
        """<run>/stats/<name>.parquet or <run>/eval/<name>.parquet, by the table's stage."""
        if name in STATS_TABLES:
            return self.stats / f"{name}.parquet"
        if name in EVAL_TABLES:
            return self.eval / f"{name}.parquet"
        raise StoreError(f"{name!r} is not a run table; known: {', '.join(STATS_TABLES + EVAL_TABLES)}")
