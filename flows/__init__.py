"""Prefect flows: thin composition of visionline's stages (the core knows nothing of Prefect)."""
