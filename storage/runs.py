"""A run's life in the store: planned and staged, its blocks marked done, finished, published under a marker
written last, named by runs/LATEST (which only moves forward in night order), one nightly at a time, swept
when abandoned, pruned by night. The states themselves (Zarr) are storage.states'.

    <root>/runs/<run_id>/   a published run: states.zarr, plan.json, meta.json, blocks/, run.json, stats/,
                            eval/, _COMPLETE (written last)
    <root>/runs/LATEST      text: the newest night's published run id
    <root>/runs/.nightly.lock   one nightly per store at a time (Store.lock: an flock, or a lease on objects)

Where a run is written before it is published is the Store's business (Store.stage): a temporary directory
renamed into place on a local disk, its own final prefix on object storage (no rename there), where readers
only list prefixes holding _COMPLETE. A retry of a publish that already succeeded returns the published run.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import gruviz_core
from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.records import to_json
from storage.layout import RunLayout
from storage.store import Store, StorePath, location, open_store, split

__all__ = [
    "RunPlan", "BlockMarker", "COMPLETE", "LOCK_TTL_S", "stage_run", "finish_run", "publish_run", "latest_run",
    "published_runs", "nightly_lock", "hold_tmp_run", "remove_tmp_run", "sweep_tmp_runs", "prune_runs",
    "code_version",
]

RUNS = "runs"
LATEST = f"{RUNS}/LATEST"
COMPLETE = "_COMPLETE"
"""Written last inside a run: readers list only runs holding it."""
NIGHTLY_LOCK = f"{RUNS}/.nightly.lock"
LOCK_TTL_S = 300.0
"""Object storage: a nightly lock not renewed for this long is stale (its holder died) and may be taken."""


@dataclass(frozen=True)
class RunPlan:
    """The row layout of a run being written: what every block process needs besides the inputs."""

    tmp_dir: str
    """Where the run is written: runs/.tmp/<run_id>.<nonce> (local), runs/<run_id> (object storage: a URL)."""
    run_id: str
    """Id the run is published under."""
    n_dogs: int
    """Dogs in the run."""
    n_obs: int
    """Rows (dog-steps) in the run; no padding rows."""
    n_layers: int
    """GRU layers (all stored)."""
    n_units: int
    """Units per layer."""
    seeds: tuple[int, ...]
    """Seed value of each model; the store's seed<k> group is seeds[k]."""
    chunk_rows: int
    """Rows per inner chunk of h/z/r (~512 KiB of float16)."""
    shard_rows: int
    """Rows per shard (chunk_rows * shard chunks); writers write whole shards."""
    block_shards: int
    """Shards per block; block b owns rows [b * block_shards * shard_rows, ...)."""

    @property
    def path(self) -> StorePath:
        return location(self.tmp_dir)

    @property
    def n_shards(self) -> int:
        return -(-self.n_obs // self.shard_rows)

    @property
    def n_blocks(self) -> int:
        return max(1, -(-self.n_shards // self.block_shards))

    def block_rows(self, block: int) -> tuple[int, int]:
        """[start, stop) rows owned by `block`."""
        if not 0 <= block < self.n_blocks:
            raise ConfigError(f"run {self.run_id}: block {block} out of range 0..{self.n_blocks - 1}")
        span = self.block_shards * self.shard_rows
        return min(block * span, self.n_obs), min((block + 1) * span, self.n_obs)

    def save(self) -> None:
        """Write the plan into its run (plan.json; tmp_dir is where it lies, not part of it)."""
        store, key = split(RunLayout.at(self.tmp_dir).plan)
        store.write_json(key, {k: v for k, v in to_json(self).items() if k != "tmp_dir"})

    @classmethod
    def load(cls, tmp_dir: str | StorePath) -> RunPlan:
        store, key = split(RunLayout.at(tmp_dir).plan)
        try:
            d = store.read_json(key)
        except FileNotFoundError as e:
            raise NotFoundError(f"{store.location(key)}: no plan; this is not a run directory made by "
                                "storage.writer.begin_run") from e
        return cls(**{**d, "seeds": tuple(d["seeds"]), "tmp_dir": str(location(tmp_dir))})


@dataclass(frozen=True)
class BlockMarker:
    """A block's done marker (blocks/<b>.json), written after its last shard is in the store."""

    run_id: str
    """The run it belongs to: a marker never counts for another run's block."""
    block: int
    """Block index."""
    rows: tuple[int, int]
    """[start, stop) rows the block owns."""
    dogs: int
    """Dogs with rows in the block (a dog straddling two blocks counts in both)."""
    device: str
    """Torch device it ran on."""
    check_max_err: tuple[float, ...]
    """Largest |h_t - ((1 - z) n + z h_(t-1))| of each seed: the recurrence check."""
    seconds: float
    """Wall time of the block."""
    started_at: float = 0.0
    """Epoch seconds when it started."""
    finished_at: float = 0.0
    """Epoch seconds when it finished."""
    host: str = ""
    """Host it ran on (a worker on the cluster path)."""
    pid: int = 0
    """Process it ran in."""


def stage_run(root: str | StorePath, run_id: str) -> StorePath:
    """Where a new run is written before it is published (Store.stage: a fresh temporary directory, or on object
    storage the run's own prefix, refused when another writer has it)."""
    store = open_store(root)
    return store.location(store.stage(f"{RUNS}/{run_id}"))


def write_marker(marker: BlockMarker, tmp_dir: str | StorePath) -> None:
    """Write a block's done marker (after its last shard)."""
    store, key = split(RunLayout.at(tmp_dir).block(marker.block))
    store.write_record(key, marker)


def read_markers(plan: RunPlan) -> tuple[list[BlockMarker], list[int]]:
    """The done markers of the plan's blocks, and the blocks that have none."""
    found, missing = [], []
    for b in range(plan.n_blocks):
        store, key = split(RunLayout.at(plan.tmp_dir).block(b))
        try:
            found.append(store.read_record(key, BlockMarker))
        except FileNotFoundError:
            missing.append(b)
    return found, missing


def finish_run(tmp_dir: str | StorePath, *, extra: dict | None = None) -> StorePath:
    """Check every block wrote its done marker, write run.json, consolidate the Zarr metadata."""
    import warnings

    import zarr

    plan = RunPlan.load(tmp_dir)
    blocks, missing = read_markers(plan)
    for m in blocks:
        if m.run_id != plan.run_id:
            raise StoreError(f"run {plan.run_id} at {plan.path}: the marker of block {m.block} belongs to run "
                             f"{m.run_id}; two nights wrote into one run directory, start this night again")
    if missing:
        raise StoreError(f"run {plan.run_id} at {plan.path}: blocks {missing} of {plan.n_blocks} have no done "
                         "marker (a writer died or never ran); run extract_block for them again, then finish_run")
    store = open_store(plan.path)
    info = {
        **store.read_json("meta.json"), **(extra or {}),
        "run_id": plan.run_id, "seeds": list(plan.seeds), "n_dogs": plan.n_dogs, "n_obs": plan.n_obs,
        "n_layers": plan.n_layers, "n_units": plan.n_units,
        "layout": {"chunk_rows": plan.chunk_rows, "shard_rows": plan.shard_rows,
                   "block_shards": plan.block_shards, "n_blocks": plan.n_blocks},
        "device": sorted({b.device for b in blocks}),
        "check_max_err": max((max(b.check_max_err, default=0.0) for b in blocks), default=0.0),
        "extract_seconds": sum(b.seconds for b in blocks),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    info.setdefault("code_version", code_version())
    info.setdefault("created_at", info["finished_at"])
    if len(info["device"]) == 1:
        info["device"] = info["device"][0]
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension to v3; we want it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(store.zarr("states.zarr"))
    store.write_json("run.json", info)
    return plan.path


def publish_run(root: str | StorePath, tmp_dir: str | StorePath) -> StorePath:
    """Publish a finished run under runs/<run_id>/ (its _COMPLETE written last) and point runs/LATEST at it
    unless a later night holds it. Idempotent: a retry after a publish that succeeded returns the run."""
    store = open_store(root)
    staged = _key_in(store, tmp_dir)
    try:
        info = store.read_json(f"{staged}/run.json")
    except FileNotFoundError:
        info = None
    run_id = str(info["run_id"]) if info else _run_id_of(staged)
    run_key = f"{RUNS}/{run_id}"
    if info is None:
        if not store.exists(f"{run_key}/{COMPLETE}"):
            raise StoreError(f"{store.location(staged)}: no run.json; call finish_run before publish_run")
        info = store.read_json(f"{run_key}/run.json")  # a retry: the first attempt published it
    store.publish(staged, run_key, marker=COMPLETE, body=f"{info['finished_at']}\n".encode())
    store.set_pointer(LATEST, run_id, rank=lambda rid: _night(store, rid))
    return store.location(run_key)


def _key_in(store: Store, where: str | StorePath) -> str:
    """The key of a location under the store's root (a run handed between processes as a location)."""
    root, loc = str(store.location()).rstrip("/"), str(location(where)).rstrip("/")
    if not loc.startswith(root + "/"):
        raise StoreError(f"{loc} is not under the store {root}")
    return loc[len(root) + 1:]


def _run_id_of(staged: str) -> str:
    """runs/<run_id> or runs/.tmp/<run_id>.<nonce> -> run_id."""
    name = staged.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "/.tmp/" in f"/{staged}" else name


def _night(store: Store, run_id: str) -> str:
    """A published run's night ('' when unreadable: any night moves past it); ISO dates sort as strings."""
    try:
        return str(store.read_json(f"{RUNS}/{run_id}/run.json").get("night", ""))
    except (FileNotFoundError, StoreError, AttributeError):
        return ""


def latest_run(root: str | StorePath) -> StorePath | None:
    """The newest published run's directory, or None when none is published."""
    store = open_store(root)
    run_id = store.pointer(LATEST)
    if run_id is None or not store.exists(f"{RUNS}/{run_id}/{COMPLETE}"):
        return None
    return store.location(f"{RUNS}/{run_id}")


def published_runs(root: str | StorePath) -> list[StorePath]:
    """Published run directories (those with _COMPLETE), oldest night first."""
    store = open_store(root)
    runs = []
    for name in store.list(RUNS):
        if name.startswith(".") or not store.exists(f"{RUNS}/{name}/{COMPLETE}"):
            continue
        info = store.read_json(f"{RUNS}/{name}/run.json")
        runs.append((str(info.get("night", "")), str(info.get("finished_at", "")), name))
    return [store.location(f"{RUNS}/{name}") for *_, name in sorted(runs)]


# ------------------------------------------------------------------------------------ hygiene


@contextmanager
def nightly_lock(root: str | StorePath, *, ttl_s: float = LOCK_TTL_S) -> Iterator[StorePath]:
    """Hold runs/.nightly.lock for the block: one nightly per store at a time (Store.lock: an flock released
    with its process, or on object storage a lease renewed by a heartbeat and taken over after `ttl_s`)."""
    store = open_store(root)
    with store.lock(NIGHTLY_LOCK, ttl_s=ttl_s, what="another nightly"):
        yield store.location(NIGHTLY_LOCK)


@contextmanager
def hold_tmp_run(tmp_dir: str | StorePath) -> Iterator[None]:
    """Mark a staged run as owned by this process, so no sweep removes it while it is written."""
    store, key = split(tmp_dir)
    with store.hold(key):
        yield


def remove_tmp_run(root: str | StorePath, tmp_dir: str | StorePath) -> bool:
    """Delete a staged (failed night's) run; True when something was removed. A published run is never
    removed here (on object storage the staged prefix is the run's: a no-op once it holds _COMPLETE)."""
    store = open_store(root)
    staged = _key_in(store, tmp_dir)
    parent, _, name = staged.rpartition("/")
    refusal = f"{location(tmp_dir)} is not a temporary run under {store.location(RUNS)}; refusing to delete it"
    if not parent.startswith(RUNS) or name.startswith(".") or name == "LATEST":
        raise StoreError(refusal)
    if store.exists(f"{staged}/{COMPLETE}"):
        return False
    try:
        return store.discard(staged)
    except StoreError:
        raise StoreError(refusal) from None


def sweep_tmp_runs(root: str | StorePath, *, grace_s: float | None = None) -> list[str]:
    """Remove staged runs nobody will finish: no live process holds them (a crashed or killed night's), or
    nobody held them and they are older than `grace_s` (default: the store's). Never LATEST's run.
    Returns the names removed."""
    store = open_store(root)
    latest = store.pointer(LATEST)
    removed = []
    for staged in store.staged(RUNS, marker=COMPLETE):
        name = staged.rsplit("/", 1)[-1]
        if name == latest or not store.abandoned(staged, grace_s=grace_s):
            continue
        store.discard(staged)
        removed.append(name)
    return removed


def prune_runs(root: str | StorePath, keep_nights: int) -> list[str]:
    """Delete published runs of all but the newest `keep_nights` nights (0 keeps all); never the LATEST run.
    Each leaves whole (Store.retract: a rename away first, or its marker first on object storage)."""
    if keep_nights <= 0:
        return []
    store = open_store(root)
    latest = store.pointer(LATEST)
    by_night: dict[str, list[str]] = {}
    for d in published_runs(root):
        by_night.setdefault(_night(store, d.name), []).append(d.name)
    nights = sorted(by_night)
    removed = []
    for night in nights[: max(0, len(nights) - keep_nights)]:
        for name in by_night[night]:
            if name == latest:
                continue
            store.retract(f"{RUNS}/{name}", marker=COMPLETE)
            removed.append(name)
    return removed


@functools.cache
def code_version() -> str:
    """gruviz's version and a digest of the computing code (gruviz_core's sources): two runs with the same
    digest computed with the same code, however it was installed."""
    h = hashlib.sha256()
    for p in sorted(Path(gruviz_core.__file__).resolve().parent.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return f"{gruviz_core.__version__}+{h.hexdigest()[:10]}"
