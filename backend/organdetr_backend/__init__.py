"""OrganDETR inference backend: image I/O, geometry, the predictor, result schema, exports, CLI and HTTP service."""

__version__ = "0.1.0"
