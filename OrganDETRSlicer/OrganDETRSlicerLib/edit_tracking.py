"""Mark boxes a person changed: a model box becomes "edited" when an interaction ends with a new geometry.

Observing the END of an interaction (``PointEndInteractionEvent``) rather than every modification keeps dragging
cheap and ignores the module's own programmatic placement; comparing with the model's box ignores clicks that move
nothing. Manual boxes stay "manual" whatever happens to them.
"""

from __future__ import annotations

from collections.abc import Callable

import slicer

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
        self._tags: dict[str, tuple[object, int]] = {}

    def track(self, roi) -> None:
        if not is_organdetr_roi(roi) or roi.GetID() in self._tags:
            return
        tag = roi.AddObserver(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self._on_end_interaction)
        self._tags[roi.GetID()] = (roi, tag)

    def track_all(self, rois) -> None:
        for roi in rois:
            self.track(roi)

    def untrack_all(self) -> None:
        for roi, tag in self._tags.values():
            roi.RemoveObserver(tag)
        self._tags.clear()

    @property
    def tracked_ids(self) -> list[str]:
        return list(self._tags)

    def _on_end_interaction(self, roi, _event) -> None:
        if update_source_after_edit(roi, self.volume_node) and self.on_change is not None:
            self.on_change(roi)
