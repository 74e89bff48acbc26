"""Prefect flows and the `gruviz` CLI: thin orchestration over gruviz_core, storage and reports."""
