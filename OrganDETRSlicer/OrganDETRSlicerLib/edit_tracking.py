"""Mark boxes a person changed: a model box becomes "edited" when an interaction ends with a new geometry.

Observing the END of an interaction (``PointEndInteractionEvent``) rather than every modification keeps dragging
cheap and ignores the module's own programmatic placement; comparing with the model's box ignores clicks that move
nothing. Manual boxes stay "manual" whatever happens to them.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer
import vtk

from .roi_nodes import box_changed, is_organdetr_roi, roi_source, set_roi_source


def update_source_after_edit(roi, volume_node) -> bool:
    """Flip a model box whose geometry changed to "edited"; True if the flag changed. Edited stays edited (undo
    of a move is still a reviewed box) and manual stays manual."""
    if roi_source(roi) != "model" or not box_changed(roi, volume_node):
        return False
    set_roi_source(roi, "edited")
    return True


class EditTracker:
    """Observes the end of interactions on a volume's boxes and keeps their source flags right.

    ``on_change(roi)`` (optional) is called after a flag flips, e.g. to refresh a results table.
    """

    def __init__(self, volume_node, on_change: Callable[[object], None] | None = None) -> None:
        self.volume_node = volume_node
        self.on_change = on_change
        self._tags: dict[str, tuple[object, list[int]]] = {}
        self._undo: list[tuple[object, object, tuple[float, float, float], str]] = []

    def track(self, roi) -> None:
        if not is_organdetr_roi(roi) or roi.GetID() in self._tags:
            return
        tags = [
            roi.AddObserver(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent, self._on_start_interaction),
            roi.AddObserver(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self._on_end_interaction),
        ]
        self._tags[roi.GetID()] = (roi, tags)

    def track_all(self, rois) -> None:
        for roi in rois:
            self.track(roi)

    def untrack_all(self) -> None:
        for roi, tags in self._tags.values():
            for tag in tags:
                roi.RemoveObserver(tag)
        self._tags.clear()
        self._undo.clear()

    @property
    def tracked_ids(self) -> list[str]:
        return list(self._tags)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo_last_edit(self) -> object | None:
        """Put the most recently interacted box back where the interaction started (geometry and source flag);
        returns that ROI, or None when there is nothing to undo (Ctrl+Z in the module)."""
        while self._undo:
            roi, matrix, size, source = self._undo.pop()
            if roi.GetScene() is None:  # deleted since: skip it
                continue
            was_modifying = roi.StartModify()
            roi.GetObjectToNodeMatrix().DeepCopy(matrix)
            roi.SetSize(*size)
            roi.EndModify(was_modifying)
            set_roi_source(roi, source)
            if self.on_change is not None:
                self.on_change(roi)
            return roi
        return None

    def _on_start_interaction(self, roi, _event) -> None:
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy(roi.GetObjectToNodeMatrix())
        self._undo.append((roi, matrix, tuple(roi.GetSize()), roi_source(roi)))

    def _on_end_interaction(self, roi, _event) -> None:
        if update_source_after_edit(roi, self.volume_node) and self.on_change is not None:
            self.on_change(roi)
