"""The parameter node wrapper allows wrapping around a ``vtkMRMLScriptedModuleNode`` parameter node with typed member
access.
"""

from .default import *
from .guiConnectors import *
from .guiCreation import *
from .parameterPack import *
from .serializers import *
from .types import *
from .validators import *
from .util import (
    findFirstAnnotation,
    getNodeTypes,
    isNodeOrUnionOfNodes,
    splitAnnotations,
    unannotatedType,
)
from .wrapper import *
