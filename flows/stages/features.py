"""The features stage: a forms snapshot -> its raw ragged sequences (cached under features/<snapshot>/)."""

from __future__ import annotations

import logging
from pathlib import Path

from gruviz_core.features import CONTEXT_NAMES, FEATURE_NAMES, build_sequences
from storage.forms import load_snapshot
from storage.registry import save_sequences, sequences_path, stored_sequence_spec

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(root: str | Path, snapshot_id: str) -> Path:
    """Path of the snapshot's sequences, built once per feature spec and cached."""
    path = sequences_path(root, snapshot_id)
    spec = stored_sequence_spec(path)
    if spec == (FEATURE_NAMES, CONTEXT_NAMES):
        return path
    if spec is not None:
        log.info("sequences at %s use an older feature spec; rebuilding", path)
    save_sequences(build_sequences(load_snapshot(root, snapshot_id)), path)
    return path
