"""A team's own model from its files: TorchScript files, or a factory plus state-dict files, and a normaliser
JSON file, read here and handed to gruviz_core.model_set.build_byo as bytes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gruviz_core.errors import ConfigError, NotFoundError
from gruviz_core.features import Normaliser
from gruviz_core.model_set import Blob, ModelSet, build_byo

__all__ = ["load_byo"]

Paths = str | Path | Sequence[str | Path] | None


def load_byo(*, script: Paths = None, factory: str | None = None, state_dict: Paths = None,
             normaliser: Normaliser | dict | str | Path | None = None, **kw: Any) -> ModelSet:
    """A model set from the team's files: `script` (TorchScript, one per seed) or `factory` + `state_dict` files;
    `normaliser` a Normaliser, its dict or its JSON file; the rest as gruviz_core.model_set.build_byo."""
    if isinstance(normaliser, (str, os.PathLike)):
        normaliser = _read_normaliser(Path(normaliser))
    return build_byo(scripts=_read(script, "TorchScript file"), factory=factory,
                     state_dicts=_read(state_dict, "state dict file"), normaliser=normaliser, **kw)


def _read(paths: Paths, what: str) -> list[Blob]:
    paths = [] if paths is None else [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    blobs = []
    for p in map(Path, paths):
        if not p.is_file():
            raise NotFoundError(f"load_byo: {what} {p} does not exist")
        blobs.append((str(p), p.read_bytes()))
    return blobs


def _read_normaliser(path: Path) -> Normaliser:
    if not path.is_file():
        raise NotFoundError(f"normaliser {path} does not exist; give the JSON file written by "
                            "gruviz_core.features.Normaliser.to_dict, or leave --normaliser out")
    try:
        return Normaliser.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"normaliser {path} is not a gruviz normaliser ({type(exc).__name__}: {exc}); give the "
                          "file written by gruviz_core.features.Normaliser.to_dict") from None
