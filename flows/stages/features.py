"""The features stage: a forms snapshot -> its raw ragged sequences (cached under features/<snapshot>/).

gruviz's own features are built once per snapshot; a model set whose features come from the
team's own callable (its manifest's feature_spec) gets the sequences that callable builds,
cached apart per callable and version.

Memory: gruviz's own features are built in two passes (`build`): the race-level columns over the
whole snapshot from a few narrow columns (text as category codes), then blocks of whole dogs of about
BLOCK_ROWS rows, each written as it is built (storage.sequences.SequenceWriter). What stays is about
100 bytes a row (the race-level columns, the block pass's columns, the row order). Measured
(bench/memory.py, the stage alone, 2 cores): peak 1.9 GB, 37 s at 250k simulated dogs (4.85M rows);
2.64 GB, 108 s at 500k (9.72M rows); 4.35 GB, 209 s at 1M (19.4M rows). A team's feature callable is
given the whole table (its contract), so that path still holds every row.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gruviz_core.byo import FeatureSpec, build_custom_sequences, callable_identity, resolve_callable
from gruviz_core.errors import FeatureMismatchError, InputError
from gruviz_core.features import (
    BLOCK_COLUMNS,
    CONTEXT_NAMES,
    FEATURE_NAMES,
    ORDER_COLUMNS,
    RACE_COLUMNS,
    dog_blocks,
    race_columns,
    run_order,
    sequences_block,
)
from storage.forms import load_snapshot, load_snapshot_columns
from storage.registry import model_set_manifest
from storage.sequences import SequenceWriter, save_sequences, sequences_path, stored_sequence_spec

__all__ = ["run", "spec_of_set", "build", "BLOCK_ROWS"]

BLOCK_ROWS = 500_000
"""Rows (whole dogs) per block of the build: about 0.5 GB of working memory each."""

log = logging.getLogger(__name__)


def run(root: str | Path, snapshot_id: str, set_id: str | None = None, *, block_rows: int = BLOCK_ROWS) -> Path:
    """Path of the snapshot's sequences for model set `set_id` (None: gruviz's features), built once and cached."""
    spec = spec_of_set(root, set_id) if set_id else None
    if spec is not None and spec.custom:
        return _custom(root, snapshot_id, spec)
    path = sequences_path(root, snapshot_id)
    stored = stored_sequence_spec(path)
    if stored == (FEATURE_NAMES, CONTEXT_NAMES):
        return path
    if stored is not None:
        log.info("sequences at %s use an older feature spec; rebuilding", path)
    build(root, snapshot_id, path, block_rows=block_rows)
    return path


def build(root: str | Path, snapshot_id: str, path, *, block_rows: int = BLOCK_ROWS) -> None:
    """gruviz's own sequences of a snapshot, in two passes: the race-level columns over the whole table (a few
    narrow columns), then block by block of whole dogs, each block written as it is built. The same sequences
    as gruviz_core.features.build_sequences of the whole table."""
    keys = load_snapshot_columns(root, snapshot_id, (*ORDER_COLUMNS, *RACE_COLUMNS))
    order = run_order(keys)
    if not len(order):
        raise InputError(f"features: snapshot {snapshot_id} has no run with a known result; nothing to build")
    race = race_columns(keys.drop(columns=[c for c in ORDER_COLUMNS if c not in RACE_COLUMNS]), order)
    del keys
    rows = load_snapshot_columns(root, snapshot_id, BLOCK_COLUMNS)
    blocks = dog_blocks(rows["dog_id"], order, block_rows)
    with SequenceWriter(path, len(order), FEATURE_NAMES, CONTEXT_NAMES) as out:
        for a, b in blocks:
            out.append(sequences_block(rows.iloc[order[a:b]], race.rows(a, b)))
    log.info("features: %d rows of snapshot %s in %d blocks", len(order), snapshot_id, len(blocks))


def spec_of_set(root: str | Path, set_id: str) -> FeatureSpec | None:
    """The feature spec recorded in a model set's manifest (None for sets that predate it)."""
    spec = model_set_manifest(root, set_id).get("feature_spec")
    return FeatureSpec.from_dict(spec) if spec else None


def _custom(root: str | Path, snapshot_id: str, spec: FeatureSpec) -> Path:
    path = sequences_path(root, snapshot_id, spec)
    if stored_sequence_spec(path) == (spec.feature_names, spec.context_names):
        return path
    fn = resolve_callable(spec.callable, what="feature callable")
    version, sha = callable_identity(fn)
    if spec.version is not None and version != spec.version:
        raise FeatureMismatchError(
            f"feature callable {spec.callable}: version {version} installed, the model set was registered with "
            f"{spec.version}; install that version or register the model set again")
    if spec.source_sha256 is not None and sha is not None and sha != spec.source_sha256:
        raise FeatureMismatchError(
            f"feature callable {spec.callable}: its source changed since the model set was registered (same version "
            f"{version}): the model would read features other than those it was validated on. Restore the source, "
            "or bump its __version__ and register the model set again")
    seqs = build_custom_sequences(load_snapshot(root, snapshot_id), fn, name=spec.callable)
    if (seqs.feature_names, seqs.context_names) != (spec.feature_names, spec.context_names):
        raise FeatureMismatchError(
            f"feature callable {spec.callable}: now returns columns {', '.join(seqs.feature_names)} | "
            f"{', '.join(seqs.context_names)}, the model set reads {', '.join(spec.feature_names)} | "
            f"{', '.join(spec.context_names)}; register the model set again")
    save_sequences(seqs, path)
    return path
