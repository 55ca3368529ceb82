"""An image grid's index-to-physical affine: defined in the torch-free client (:mod:`organdetr_client.image_geometry`),
re-exported here for the model's modules."""

from organdetr_client.image_geometry import ImageGrid as ImageGrid
from organdetr_client.image_geometry import index_to_physical_matrix as index_to_physical_matrix
