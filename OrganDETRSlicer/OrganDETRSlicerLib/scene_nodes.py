"""Small scene helpers shared by the box and preview code: subject hierarchy placement and complete removal."""

from __future__ import annotations

import slicer


def place_under(scene, node, parent_node) -> None:
    """Show ``node`` under ``parent_node`` in the subject hierarchy (creating items the hierarchy lacks)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent_item = hierarchy.GetItemByDataNode(parent_node)
    if not parent_item:
        parent_item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), parent_node)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent_item)
    else:
        hierarchy.CreateItem(parent_item, node)


def remove_node(scene, node) -> None:
    """Remove a displayable node with its display and storage nodes (the scene keeps those otherwise)."""
    companions = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
    companions += [node.GetNthStorageNode(index) for index in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for companion in companions:
        if companion is not None and scene.IsNodePresent(companion):
            scene.RemoveNode(companion)
