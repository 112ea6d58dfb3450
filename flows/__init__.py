"""Prefect flows: thin composition of visionline's stages (the core knows nothing of Prefect).

Importing the package sends visionline's own log lines to the run they belong to
(``flows.logs``), so the Prefect UI shows what each task did, not only its state."""

from flows.logs import ship_visionline_logs

ship_visionline_logs()
