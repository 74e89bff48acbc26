"""Form data formats: each format's raw table -> canonical runs (`adapters`), form files' bytes -> raw
tables, merged canonical runs and their accounting (`reader`).

The adapters' public names are re-exported here (`from gruviz_core.formats import adapt`); the reader
is imported as `gruviz_core.formats.reader`.
"""

from gruviz_core.formats.adapters import (
    DATE_WINDOW,
    FORMATS,
    PROVENANCE,
    REASONS,
    WARNINGS,
    Adapted,
    FormatSpec,
    adapt,
    check_columns,
    detect_format,
    display_name,
    normalise_name,
    parse_dates,
    parse_margin,
    parse_number,
    parse_place,
    parse_price,
)

__all__ = [
    "DATE_WINDOW",
    "FORMATS",
    "PROVENANCE",
    "REASONS",
    "WARNINGS",
    "Adapted",
    "FormatSpec",
    "adapt",
    "check_columns",
    "detect_format",
    "display_name",
    "normalise_name",
    "parse_dates",
    "parse_margin",
    "parse_number",
    "parse_place",
    "parse_price",
]
