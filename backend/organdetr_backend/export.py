"""Writing and reading detection results (JSON, Slicer markups, CSV): defined in the torch-free client
(:mod:`organdetr_client.export`), re-exported here for the CLI and the service."""

from organdetr_client.export import *  # noqa: F403
