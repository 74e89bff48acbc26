"""Route gruviz's own library logs (gruviz_core, storage, reports) to the Prefect UI."""

from __future__ import annotations

import logging

__all__ = ["LIBRARY_LOGGERS", "route_library_logs"]

LIBRARY_LOGGERS = ("gruviz_core", "storage", "reports", "flows")


def route_library_logs(level: int = logging.INFO) -> None:
    """Attach Prefect's API log handler to our loggers once (what PREFECT_LOGGING_EXTRA_LOGGERS does,
    but also in a worker's flow-run process where Prefect was imported before us)."""
    from prefect.logging.handlers import APILogHandler

    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, APILogHandler) for h in logger.handlers):
            logger.addHandler(APILogHandler())
