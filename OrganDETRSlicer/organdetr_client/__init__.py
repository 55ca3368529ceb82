"""organdetr_client: everything a client of the OrganDETR service needs, without torch, monai or fastapi.

The result schema and its parsing, box geometry, organ terminology, exports, the service's API contract and the
HTTP client. It runs on Python 3.9 (Slicer 5.8) with numpy and pydantic only; the backend and the model import it,
so each of these is written once. Importing the package does no work: import the submodules you use.
"""

__version__ = "0.1.0"
