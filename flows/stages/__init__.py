"""One Prefect-free module per stage of the nightly and train flows.

Each stage loads its inputs by key through `storage`, computes through `gruviz_core`, saves through
`storage`, and returns keys or a small typed record (never arrays), so a Prefect task is a one-line
call and every stage runs without Prefect too:

    ingest    flows.sources (files), storage.forms  gruviz_core.formats (reader, adapters)
    features  storage.forms, storage.registry        gruviz_core.features (sequences)
    train     storage.registry (model sets)          gruviz_core.train, gruviz_core.model
    extract   storage.states (plan, BlockWriter)     gruviz_core.extract (states and gates)
    stats     storage.states, storage.tables         gruviz_core.stats, gruviz_core.cohorts
    evaluate  storage.states, storage.tables         gruviz_core.evaluate, gruviz_core.resilience
    report    storage.tables, storage.layout         reports (build, render, publish)
    notify    storage.tables                         reports.email
"""

__all__ = ["ingest", "features", "train", "extract", "stats", "evaluate", "report", "notify"]
