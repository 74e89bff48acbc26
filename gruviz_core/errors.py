"""Errors gruviz raises on purpose.

    GruvizError                      base: every message says what, where, expected, how to fix
    ├── InputError                   form data that cannot be used
    │   ├── UnreadableFileError      a source file that cannot be opened or parsed
    │   ├── MissingColumnError       a required column is absent from a file
    │   └── UnknownFormatError       no adapter recognises a file's header
    ├── StoreError                   the artifact store (snapshots, registry, runs)
    │   └── NotFoundError            a snapshot, model set or run that does not exist
    ├── ModelError                   a model that cannot be used
    │   ├── NoGRUError               no torch.nn.GRU inside the model
    │   ├── AmbiguousGRUError        several GRUs and none named
    │   └── FeatureMismatchError     the GRU's input size does not match the feature spec
    ├── ExtractionCheckError         recomputed recurrence differs from the fused nn.GRU
    ├── ConfigError                  settings or parameters out of range
    └── NotifyError                  the report's email could not be sent
"""

from __future__ import annotations

__all__ = [
    "GruvizError",
    "InputError",
    "UnreadableFileError",
    "MissingColumnError",
    "UnknownFormatError",
    "StoreError",
    "NotFoundError",
    "ModelError",
    "NoGRUError",
    "AmbiguousGRUError",
    "FeatureMismatchError",
    "ExtractionCheckError",
    "ConfigError",
    "NotifyError",
]


class GruvizError(Exception):
    """Base of every error gruviz raises on purpose."""


class InputError(GruvizError):
    """Form data that cannot be used."""


class UnreadableFileError(InputError):
    """A source file that cannot be opened or parsed."""


class MissingColumnError(InputError):
    """A required column is absent from a source file."""


class UnknownFormatError(InputError):
    """No adapter recognises a file's header."""


class StoreError(GruvizError):
    """The artifact store is missing something or is inconsistent."""


class NotFoundError(StoreError):
    """A snapshot, model set or run that does not exist in the store."""


class ModelError(GruvizError):
    """A model that cannot be used."""


class NoGRUError(ModelError):
    """No torch.nn.GRU inside the model."""


class AmbiguousGRUError(ModelError):
    """Several GRUs inside the model and none named."""


class FeatureMismatchError(ModelError):
    """The GRU's input size does not match the feature spec."""


class ExtractionCheckError(GruvizError):
    """The recomputed recurrence differs from the fused nn.GRU output."""


class ConfigError(GruvizError):
    """Settings or parameters out of range."""


class NotifyError(GruvizError):
    """The report's email could not be sent."""
