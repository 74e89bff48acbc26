"""The features stage: a forms snapshot -> its raw ragged sequences (cached under features/<snapshot>/).

gruviz's own features are built once per snapshot; a model set whose features come from the
team's own callable (its manifest's feature_spec) gets the sequences that callable builds,
cached apart per callable and version.

Memory: holds every row of the snapshot (pandas frames and the sequences built from them); measured
(bench/memory.py) at 1M simulated dogs (19.4M rows): peak 19.1 GB, about 0.97 GB per million rows
(at 250k dogs: 7.29 GB before the columns were filled into float32 one by one, 5.06 GB after).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gruviz_core.byo import FeatureSpec, build_custom_sequences, callable_identity, resolve_callable
from gruviz_core.errors import FeatureMismatchError
from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, build_sequences
from storage.forms import load_snapshot
from storage.registry import model_set_manifest
from storage.sequences import save_sequences, sequences_path, stored_sequence_spec

__all__ = ["run", "spec_of_set"]

log = logging.getLogger(__name__)


def run(root: str | Path, snapshot_id: str, set_id: str | None = None) -> Path:
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
    save_sequences(build_sequences(load_snapshot(root, snapshot_id)), path)
    return path


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
