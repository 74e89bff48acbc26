"""One module per part of the report page; each builds its `Section`s from `RunResults` (pure)."""
