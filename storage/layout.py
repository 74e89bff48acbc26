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

__all__ = ["StoreLayout"]


@dataclass(frozen=True)
class StoreLayout:
    """Paths of the store's parts; creates nothing."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "StoreLayout":
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
