"""What the explorer reads of the store: the published runs, a run's dogs, and one dog's record.

A run's per-row tables (scores, results, races, the cohort layer's s and F_tau) are read once per run
and kept (`ExploreStore` holds the few most recent runs), so a dog's page costs one read of its states.
A unit's page reads the probe atlas (eval/unit_atlas) once per run, and each seed's states on a sample
of dogs (those wholly inside a few windows of rows spread over the store) once per run and seed, and
at the first SCATTER_ROWS of the probe's own rows (eval/probe_rows, with the quantities there).
Run ids are looked up among the published runs only, and dog ids in the run's index: nothing a request
names becomes a path.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gruviz_core.errors import NotFoundError
from gruviz_core.explore import CohortBand, DogDirectory, DogRecord, RunInfo, UnitAtlas, UnitQuantity, UnitRecord
from gruviz_core.probes import unit_labels
from storage.layout import RunLayout, StoreLayout
from storage.results import read_json, read_summary
from storage.runs import RunPlan, latest_run, published_runs
from storage.states import StatesReader, open_states
from storage.store import StorePath, location, split

__all__ = ["ExploreStore", "RUN_ID", "read_rows"]

RUN_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")
"""What a run id may look like (storage.states publishes runs under runs/<run_id>/)."""
_KEEP_RUNS = 3
"""Runs kept in memory at once (a run's per-row tables: ~40 bytes per row)."""
SAMPLE_WINDOWS = 4
"""Windows of rows a unit page's sample of dogs is drawn from, spread evenly over the store (dogs are stored by
id, so one window alone could hold only the oldest dogs)."""
SAMPLE_WINDOW_ROWS = 4096
"""Rows per window (one inner chunk of the states store: one decompression per window and array)."""
SCATTER_ROWS = 3000
"""Most of the probe's rows (eval/probe_rows; whole dogs, in store order) a unit page's scatter draws."""


class ExploreStore:
    """The explorer's read-only view of a store root (`GRUVIZ_HOME`); safe to share between threads."""

    def __init__(self, root: str | Path):
        self.root = StoreLayout.at(root).root
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()

    def runs(self) -> list[RunInfo]:
        """Published runs, newest night first."""
        out = []
        for d in reversed(published_runs(self.root)):
            meta = read_json(RunLayout.at(d).run_json) or {}
            out.append(RunInfo(d.name, str(meta.get("night", "")), int(meta.get("n_dogs", 0))))
        return out

    def latest_run_id(self) -> str | None:
        """The run runs/LATEST points at (None when nothing is published)."""
        d = latest_run(self.root)
        return d.name if d is not None else None

    def directory(self, run_id: str) -> DogDirectory:
        """Every dog of a published run; NotFoundError when there is no such run."""
        run = self._run(run_id)
        return DogDirectory(run_id, run.ids, run.names)

    def dog(self, run_id: str, dog_id: str) -> DogRecord:
        """One dog's record; NotFoundError for an unknown run or dog."""
        return self._run(run_id).record(dog_id)

    def unit(self, run_id: str, seed: int, layer: int, unit: int) -> UnitRecord:
        """One unit of one seed position and layer; NotFoundError for an unknown run, seed, layer or unit."""
        return self._run(run_id).unit(seed, layer, unit)

    def atlas(self, run_id: str) -> UnitAtlas:
        """The run's probe atlas (eval/unit_atlas, read once per run); NotFoundError for an unknown run."""
        run = self._run(run_id)
        return UnitAtlas(run_id, tuple(run.reader.seeds), run._atlas, run.atlas_note)

    def read_states(self, run_id: str, dog_id: str):
        """Only the dog's states under seed 0 (what the benchmark compares a page with)."""
        run = self._run(run_id)
        return run.reader.dog(dog_id, 0)

    def _run(self, run_id: str) -> _Run:
        run_dir = self._published(run_id)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.run_dir != run_dir or run.finished != _finished(run_dir):
                run = _Run(run_id, run_dir)
                self._runs[run_id] = run
                while len(self._runs) > _KEEP_RUNS:
                    self._runs.popitem(last=False)
            self._runs.move_to_end(run_id)
            return run

    def _published(self, run_id: str) -> StorePath:
        if not RUN_ID.match(run_id) or ".." in run_id:
            raise NotFoundError(f"{self.root}: {run_id!r} is not a run id")
        d = StoreLayout.at(self.root).run(run_id)
        if not RunLayout.at(d).complete.is_file() or not _directly_under(d, StoreLayout.at(self.root).runs):
            raise NotFoundError(f"{self.root}: no published run {run_id!r}; see runs/ (gruviz nightly publishes them)")
        return d


def _read_filtered(path: StorePath, columns: list[str], layer: int) -> pd.DataFrame:
    """The rows of one layer of a Parquet table (the filter pushed down to the row groups)."""
    store, key = split(path)
    with store.open(key) as f:
        return pq.read_table(f, columns=columns, filters=[("layer", "=", layer)]).to_pandas()


def _parquet(path: StorePath, columns: list[str] | None = None) -> pd.DataFrame:
    store, key = split(path)
    return store.read_parquet(key, columns=columns)


def _directly_under(d: StorePath, parent: StorePath) -> bool:
    """Whether `d`, links followed, is an entry of `parent` (a run directory linked from elsewhere is not)."""
    return str(location(d).parent).rstrip("/") == str(location(parent)).rstrip("/")


def _finished(run_dir: StorePath) -> float:
    store, key = split(RunLayout.at(run_dir).complete)
    return store.modified(key) or 0.0


class _Run:
    """One run's per-row tables in memory and its states reader."""

    def __init__(self, run_id: str, run_dir: StorePath):
        self.run_id, self.run_dir, self.finished = run_id, run_dir, _finished(run_dir)
        self.reader: StatesReader = open_states(run_dir)
        idx = self.reader.index()
        self.ids = [str(x) for x in idx["dog_id"]]
        self.names = [str(x) for x in idx["dog_name"]]
        self.offsets = np.concatenate([[0], np.cumsum(idx["row_size"].to_numpy(np.int64))])
        rows = self.reader.rows()
        self.won = rows["won"].to_numpy(np.float32)
        self.market = rows["market_prob"].to_numpy(np.float32)
        self.scores = self.reader.scores()  # (obs, S)
        codes = pd.factorize(rows["race_id"].to_numpy(), sort=False)[0]
        self.race = codes.astype(np.int64)  # (obs,)
        self.by_race = np.argsort(codes, kind="stable")  # rows grouped by race
        self.race_start = np.searchsorted(codes[self.by_race], np.arange(codes.max() + 2 if len(codes) else 1))
        self.summary = read_summary(run_dir)
        self.rule = self.summary.rule if self.summary else None
        self.layer = self.summary.cohort_layer if self.summary else self.reader.n_layers - 1
        self._stats(run_dir)
        self._atlas, self.atlas_note = _read_atlas(run_dir)
        self._labels = {layer: unit_labels(self._atlas, seed=0, layer=layer) for layer in range(self.reader.n_layers)} \
            if self._atlas is not None else None
        self._samples: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._probe_h: dict[int, np.ndarray] = {}
        self._probe_rows: pd.DataFrame | None = _read_probe_rows(run_dir) if self._atlas is not None else None
        self._sample_lock = threading.Lock()

    def _stats(self, run_dir: StorePath) -> None:
        """The cohort layer's s, abs-sum and F_tau per row, each dog's cohort and plateau, the bands."""
        self.s = self.abs_sum = self.f = None
        self.cohort: list[str] | None = None
        self.plateau = np.full(len(self.ids), np.nan)
        self.bands: dict[str, CohortBand] = {}
        layout = RunLayout.at(run_dir)
        tau = float(((self.rule or {}).get("params") or {}).get("tau", 0.95))
        f_col = f"f{int(round(tau * 100)):03d}"
        if layout.table("dog_step").is_file():
            ds = _read_filtered(layout.table("dog_step"), ["layer", "abs_sum", "s", f_col], self.layer)
            if len(ds) == self.reader.n_obs:  # one row per store row, in store order (flows.stages.stats)
                self.s, self.abs_sum = ds["s"].to_numpy(np.float64), ds["abs_sum"].to_numpy(np.float64)
                self.f = ds[f_col].to_numpy(np.float64)
        if layout.table("dog").is_file():
            dog = _parquet(layout.table("dog"), columns=["dog_index", "layer", "plateau_step", "cohort"])
            dog = dog[dog["layer"] == self.layer].sort_values("dog_index")
            if len(dog) == len(self.ids):
                self.cohort = [str(c) for c in dog["cohort"]]
                self.plateau = dog["plateau_step"].to_numpy(np.float64)
        if layout.table("step").is_file():
            st = _parquet(layout.table("step"))
            st = st[st["layer"] == self.layer].sort_values("step")
            for c, g in st.groupby("cohort", sort=False):
                self.bands[str(c)] = CohortBand(
                    str(c), g["step"].to_numpy(np.int64), g["n"].to_numpy(np.int64), g["s_q25"].to_numpy(np.float64),
                    g["s_q50"].to_numpy(np.float64), g["s_q75"].to_numpy(np.float64),
                )

    def record(self, dog_id: str) -> DogRecord:
        d = self.reader.dog_index(dog_id)
        a, b = int(self.offsets[d]), int(self.offsets[d + 1])
        states = self.reader.dog_at(d, 0)
        field = [self.by_race[self.race_start[c] : self.race_start[c + 1]] for c in self.race[a:b]]
        field_offsets = np.concatenate([[0], np.cumsum([len(f) for f in field])]).astype(np.int64)
        rows = np.concatenate(field) if field else np.zeros(0, np.int64)
        cohort = self.cohort[d] if self.cohort is not None else None

        def cut(x):
            return None if x is None else x[a:b]

        return DogRecord(
            run_id=self.run_id, states=states, seeds=tuple(self.reader.seeds), scores=self.scores[a:b],
            won=self.won[a:b], market_prob=self.market[a:b], field_offsets=field_offsets,
            field_scores=self.scores[rows], s=cut(self.s), abs_sum=cut(self.abs_sum), f=cut(self.f), cohort=cohort,
            plateau_step=float(self.plateau[d]), cohort_layer=self.layer, rule=self.rule,
            band=self.bands.get(cohort) if cohort is not None else None, band_all=self.bands.get("all"),
            unit_labels=self._labels,
        )

    def unit(self, seed: int, layer: int, unit: int) -> UnitRecord:
        r = self.reader
        if not (0 <= seed < len(r.seeds) and 0 <= layer < r.n_layers and 0 <= unit < r.n_units):
            raise NotFoundError(f"run {self.run_id} has seeds 0..{len(r.seeds) - 1}, layers 0..{r.n_layers - 1} and "
                                f"units 0..{r.n_units - 1}; no seed {seed}, layer {layer}, unit {unit}")
        dog, step, h = self._sample(seed)
        quantities, best = (), {}
        if self._atlas is not None:
            a = self._atlas[(self._atlas["seed"] == seed) & (self._atlas["layer"] == layer)]
            mine = a[a["unit"] == unit]
            mine = mine.iloc[np.argsort(-np.nan_to_num(np.abs(mine["rho"].to_numpy(np.float64)), nan=-1.0),
                                        kind="stable")]
            quantities = tuple(UnitQuantity(str(q), float(rho), int(k), int(n)) for q, rho, k, n in
                               zip(mine["quantity"], mine["rho"], mine["rank"], mine["n_rows"]))
            top = a[a["rank"] <= 5].sort_values(["quantity", "rank"])
            best = {str(q): tuple((int(u), float(rho)) for u, rho in zip(g["unit"], g["rho"]))
                    for q, g in top.groupby("quantity", sort=False)}
        note = self.atlas_note if not quantities else None
        if note is None and not quantities:
            note = f"The probe atlas has no row for seed {seed}, layer {layer}, unit {unit}."
        scatter = {}
        pr_rows = self._probe_rows
        if quantities and pr_rows is not None and quantities[0].quantity in pr_rows.columns:
            x = pr_rows[quantities[0].quantity].to_numpy(np.float64)
            ok = np.isfinite(x)
            scatter = dict(probe_dog=pr_rows["dog_index"].to_numpy(np.int64)[ok],
                           probe_step=pr_rows["step"].to_numpy(np.int64)[ok], probe_row=pr_rows["row"].to_numpy(
                               np.int64)[ok], probe_x=x[ok], probe_h=self._probe_states(seed)[ok, layer, unit])
        return UnitRecord(
            run_id=self.run_id, seed=seed, seeds=tuple(r.seeds), layer=layer, unit=unit, n_layers=r.n_layers,
            n_units=r.n_units, quantities=quantities, best_units=best, atlas_note=note, dog_index=dog, step=step,
            value=h[:, layer, unit], **scatter,
        )

    def _sample(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dog_index, step, h (rows, L, H)) of the dogs wholly inside SAMPLE_WINDOWS windows of rows, under one seed
        position; read once per seed."""
        with self._sample_lock:
            if seed not in self._samples:
                self._samples[seed] = _sample_rows(self.reader, self.offsets, seed)
            return self._samples[seed]


    def _probe_states(self, seed: int) -> np.ndarray:
        """h (rows, L, H) at the scatter's probe rows under one seed position; read once per seed."""
        with self._sample_lock:
            if seed not in self._probe_h:
                self._probe_h[seed] = read_rows(self.reader, seed, self._probe_rows["row"].to_numpy(np.int64),
                                                 _chunk_rows(self.run_dir, self.reader))
            return self._probe_h[seed]


def _read_probe_rows(run_dir: StorePath) -> pd.DataFrame | None:
    """The first SCATTER_ROWS rows of eval/probe_rows, whole dogs only, in store order; None without it."""
    path = RunLayout.at(run_dir).table("probe_rows")
    if not path.is_file():
        return None
    df = _parquet(path).sort_values("row", kind="stable").reset_index(drop=True)
    if len(df) > SCATTER_ROWS:
        cut = df["dog_index"].iloc[SCATTER_ROWS]  # the dog that would be cut: left out whole
        first = int(np.flatnonzero(df["dog_index"].to_numpy() == cut)[0])
        df = df.iloc[: first or SCATTER_ROWS]
    return df.reset_index(drop=True)


def _chunk_rows(run_dir: StorePath, reader: StatesReader) -> int:
    """Rows per inner chunk of the states (the smallest read), from the run's plan; a shard where there is none."""
    try:
        return int(RunPlan.load(run_dir).chunk_rows)
    except Exception:  # noqa: BLE001 - a run written before plan.json: shards are still whole reads
        return int(reader.shard_rows)


def read_rows(reader: StatesReader, seed: int, rows: np.ndarray, chunk: int) -> np.ndarray:
    """h (rows, L, H) float32 of sorted store rows under one seed position, reading only the inner chunks of `chunk`
    rows they lie in, adjacent ones in one read."""
    if not len(rows):
        return np.zeros((0, reader.n_layers, reader.n_units), np.float32)
    c = np.unique(rows // chunk)
    out = []
    for run in np.split(c, np.flatnonzero(np.diff(c) > 1) + 1):
        a, b = int(run[0]) * chunk, min((int(run[-1]) + 1) * chunk, reader.n_obs)
        h = np.concatenate([x.h for x in reader.iter_chunks(seed, rows=(a, b))])
        out.append(h[rows[(rows >= a) & (rows < b)] - a])
    return np.concatenate(out).astype(np.float32, copy=False)


def _read_atlas(run_dir: StorePath) -> tuple[pd.DataFrame | None, str | None]:
    """eval/unit_atlas (seed, layer, unit, quantity, rho, rank, n_rows), or None and why it is missing."""
    layout = RunLayout.at(run_dir)
    if layout.table("unit_atlas").is_file():
        return _parquet(layout.table("unit_atlas")), None
    error = (read_json(layout.probe_record) or {}).get("error")
    if error:
        return None, f"The probe atlas was not computed for this run ({error})."
    return None, "This run has no probe atlas (eval/unit_atlas.parquet): the probe stage did not run."


def _sample_rows(reader: StatesReader, offsets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_obs = int(offsets[-1])
    width = SAMPLE_WINDOW_ROWS
    if n_obs <= SAMPLE_WINDOWS * width:
        windows = [(0, n_obs)]
    else:
        starts = np.linspace(0, n_obs - width, SAMPLE_WINDOWS).astype(np.int64) // width * width
        windows = [(int(a), int(a) + width) for a in np.unique(starts)]
    dogs, steps, hs = [], [], []
    for a, b in windows:
        first = np.searchsorted(offsets, a, side="left")  # first dog starting at or after a
        last = np.searchsorted(offsets, b, side="right") - 1  # dogs first..last-1 end at or before b
        if last <= first:
            continue
        lo, hi = int(offsets[first]), int(offsets[last])
        h = np.concatenate([c.h for c in reader.iter_chunks(seed, rows=(lo, hi))])  # (rows, L, H)
        size = np.diff(offsets[first : last + 1])
        dogs.append(np.repeat(np.arange(first, last, dtype=np.int64), size))
        steps.append(np.arange(hi - lo) - np.repeat(offsets[first:last] - lo, size) + 1)
        hs.append(h)
    if not hs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, reader.n_layers, reader.n_units), np.float32)
    return np.concatenate(dogs), np.concatenate(steps).astype(np.int64), np.concatenate(hs)
