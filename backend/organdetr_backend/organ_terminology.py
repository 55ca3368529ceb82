"""Organ display names, anatomy colours and terminology codes: defined in the torch-free client
(:mod:`organdetr_client.organ_terminology`), re-exported here for the backend's modules."""

from organdetr_client.organ_terminology import *  # noqa: F403
