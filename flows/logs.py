"""visionline's own log lines in the Prefect UI.

Prefect ships only the loggers it is told about (its own, and ``PREFECT_LOGGING_EXTRA_LOGGERS``
when that is set before Prefect is first imported). The stages log through ``visionline.*``
loggers, so without this a flow run's log in the UI holds Prefect's state changes and none of
what the run did: the ingest counts, the validation result, the gate's reasons, the deploy
checks, the training pod's lines (relayed as ``[pod] line`` by the compute backends).

``ship_visionline_logs`` attaches Prefect's API log handler to the ``visionline`` logger once;
a record goes to the flow or task run it was emitted in (the relay threads carry their
caller's run context). Records emitted outside any run (the CLI in the same process) are
left to the other handlers instead of Prefect's "no flow run id" warning.
"""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

LOGGER = "visionline"


class RunLogHandler(APILogHandler):
    """Prefect's API handler for records emitted inside a flow or task run only."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "flow_run_id", None) is None:
            from prefect.context import get_run_context

            try:
                get_run_context()
            except MissingContextError:
                return
        super().emit(record)


def ship_visionline_logs(level: int = logging.INFO) -> RunLogHandler:
    """Send ``visionline.*`` records of ``level`` and above to the run's log (idempotent)."""
    logger = logging.getLogger(LOGGER)
    for h in logger.handlers:
        if isinstance(h, RunLogHandler):
            return h
    handler = RunLogHandler(level=level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler
