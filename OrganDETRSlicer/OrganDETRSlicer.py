"""OrganDETR: detect organs in CT as boxes, review and correct them, export them.

The widget only wires the UI to the logic; everything else lives in OrganDETRSlicerLib (GUI-free, tested with
slicer-core). Nothing heavy happens at import time: torch and the backend are only ever used by the backend
process, which the logic starts on demand.
"""

from __future__ import annotations

import os
import sys

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

sys.path.insert(0, os.path.dirname(__file__))  # OrganDETRSlicerLib next to this file

POLL_INTERVAL_MS = 500
DEVICE_CHOICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}


class OrganDETRSlicer(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "OrganDETR"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["OrganDETR for 3D Slicer developers"]
        self.parent.helpText = (
            "Detect organs in a CT volume as boxes (one ROI per organ), review and correct them, and export them as "
            "JSON, Slicer markups or CSV. Shortcuts: Ctrl+Shift+D detect, Ctrl+Shift+B add box, Delete removes the "
            "selected box, Ctrl+Z undoes the last box edit."
        )
        self.parent.acknowledgementText = (
            "Organ-DETR (Ghahremani et al., IEEE TMI); test data from TotalSegmentator and OpenKBP "
            "(see the repository README)."
        )


@parameterNodeWrapper
class OrganDETRSlicerParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    model: str = "Shipped default"
    device: str = "Auto"
    pythonExecutable: str = ""
    serverUrl: str = ""
    remoteConsent: bool = False
    scoreThreshold: float = 0.3
    segmentationPreview: bool = False
    lockBoxes: bool = False


class OrganDETRSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: reads the controls, calls the logic, shows what it returns."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._timer = None
        self._shortcuts = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OrganDETRSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OrganDETRSlicerLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.ui.testConnectionButton.connect("clicked(bool)", self.onTestConnection)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.removeDependenciesButton.connect("clicked(bool)", self.onRemoveDependencies)
        self.ui.modelFolderButton.connect("clicked(bool)", self.onChooseModelFolder)
        self.ui.scoreThresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.lockBoxesCheckBox.connect("toggled(bool)", self.onLockToggled)
        self.ui.removePreviewButton.connect("clicked(bool)", self.onRemovePreview)
        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBox)
        self.ui.deleteBoxButton.connect("clicked(bool)", self.onDeleteBox)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.importButton.connect("clicked(bool)", self.onImport)
        self.ui.batchButton.connect("clicked(bool)", self.onBatch)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onRowClicked)
        self.ui.embeddedBackendRadio.connect("toggled(bool)", self.updateBackendControls)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        for keys, slot in (
            ("Ctrl+Shift+D", self.onApplyOrCancel),
            ("Ctrl+Shift+B", self.onAddBox),
            ("Ctrl+Z", self.onUndo),
        ):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", slot)
            self._shortcuts.append(shortcut)
        deleteShortcut = qt.QShortcut(qt.QKeySequence("Delete"), self.ui.resultsTable)
        deleteShortcut.connect("activated()", self.onDeleteBox)
        self._shortcuts.append(deleteShortcut)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateBackendControls()

    def cleanup(self) -> None:
        self.removeObservers()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            background = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetBackgroundLayer().GetVolumeNode()
            if background is not None and background.IsA("vtkMRMLScalarVolumeNode"):
                self._parameterNode.inputVolume = background

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- backend ------------------------------------------------------------------------------------------------

    def backendChoice(self) -> dict:
        return {
            "remote": self.ui.remoteBackendRadio.checked,
            "url": self.ui.serverUrlEdit.text.strip(),
            "token": self.ui.tokenEdit.text.strip(),
            "consent": self.ui.remoteConsentCheckBox.checked,
            "python": self.ui.pythonPathEdit.text.strip() or None,
            "model": self._parameterNode.model,
            "device": DEVICE_CHOICES[self.ui.deviceSelector.currentText],
        }

    def updateBackendControls(self, *_args) -> None:
        remote = self.ui.remoteBackendRadio.checked
        for name in ("serverUrlEdit", "tokenEdit", "testConnectionButton", "consentLabel", "remoteConsentCheckBox"):
            getattr(self.ui, name).setEnabled(remote)
        self.ui.pythonPathEdit.setEnabled(not remote)

    def onTestConnection(self) -> None:
        with slicer.util.tryWithErrorDisplay("Connection failed.", waitCursor=True):
            health = self.logic.client(**self.backendChoice()).health()
            self.ui.connectionStatusLabel.text = "Connected: OrganDETR " + health["version"]
            self.showDevice(health)

    def showDevice(self, health: dict) -> None:
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription(health)

    def onInstallDependencies(self) -> None:
        plan = self.logic.installationPlan()
        if plan.nothing_to_do:
            slicer.util.infoDisplay(plan.summary())
            return
        if slicer.util.confirmOkCancelDisplay(plan.summary(), "Install OrganDETR backend"):
            with slicer.util.tryWithErrorDisplay("Installation failed.", waitCursor=True):
                self.logic.install(plan)
                if plan.restart_required:
                    slicer.util.infoDisplay("Installed. Please restart Slicer.")

    def onRemoveDependencies(self) -> None:
        if slicer.util.confirmOkCancelDisplay("Remove the OrganDETR backend package from Slicer's Python?"):
            with slicer.util.tryWithErrorDisplay("Removal failed.", waitCursor=True):
                self.logic.removeBackendPackage()

    def onChooseModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "OrganDETR checkpoint folder")
        if folder:
            self.ui.modelSelector.addItem(folder)
            self.ui.modelSelector.currentText = folder

    # --- detection ----------------------------------------------------------------------------------------------

    def onApplyOrCancel(self) -> None:
        if self._run is not None:
            self._timer.stop()
            with slicer.util.tryWithErrorDisplay("Cancelling failed."):
                self._run.cancel()
            self.finishRun("Cancelled.")
            return
        with slicer.util.tryWithErrorDisplay("Detection could not start.", waitCursor=True):
            self._run = self.logic.startDetection(
                self._parameterNode.inputVolume, self.backendChoice(), self.ui.segmentationPreviewCheckBox.checked
            )
            self.showDevice(self._run.client.health())
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.value = 0
            self._timer.start()

    def onPoll(self) -> None:
        try:
            status = self._run.poll()
            self.ui.progressBar.value = int(100 * status.progress)
            self.ui.statusLabel.text = f"{status.stage}..."
            if status.status == "done":
                self._timer.stop()
                rois = self._run.finish()
                self.logic.trackEdits(self._parameterNode.inputVolume, self.refreshTable)
                self.onThresholdChanged(self.ui.scoreThresholdSlider.value)
                self.finishRun(f"{len(rois)} organs detected.")
            elif status.finished:
                self._timer.stop()
                self.finishRun(f"Job {status.status}.")
        except Exception as error:  # shown in plain words, never a traceback dialog
            self._timer.stop()
            self.finishRun("")
            slicer.util.errorDisplay(str(error))

    def finishRun(self, message: str) -> None:
        self._run = None
        self.ui.applyButton.text = "Detect organs"
        self.ui.statusLabel.text = message
        self.refreshTable()

    def onBatch(self) -> None:
        progress = slicer.util.createProgressDialog(labelText="Detecting organs in all volumes...", maximum=100)
        with slicer.util.tryWithErrorDisplay("Batch detection failed.", waitCursor=True):
            report = self.logic.runBatch(self.backendChoice(), progress)
            lines = [f"{name}: {count} organs" for name, count in report.boxes.items()]
            lines += [f"{name}: {error}" for name, error in report.errors.items()]
            slicer.util.infoDisplay("\n".join(lines) or "No volumes.")
        progress.close()
        self.refreshTable()

    # --- review and correction ----------------------------------------------------------------------------------

    def onVolumeChanged(self, _node) -> None:
        self.refreshTable()

    def refreshTable(self, *_args) -> None:
        rows = self.logic.tableRows(self._parameterNode.inputVolume) if self._parameterNode else []
        table = self.ui.resultsTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            for column, text in enumerate(row):
                table.setItem(index, column, qt.QTableWidgetItem(text))
        self.ui.manualOrganSelector.clear()
        self.ui.manualOrganSelector.addItems(self.logic.organNames(self._parameterNode.inputVolume))

    def onRowClicked(self, row, _column) -> None:
        self.logic.centreViewsOn(self._parameterNode.inputVolume, row)

    def onThresholdChanged(self, value) -> None:
        self.logic.applyThreshold(self._parameterNode.inputVolume, value)

    def onLockToggled(self, locked) -> None:
        self.logic.lockBoxes(self._parameterNode.inputVolume, locked)

    def onAddBox(self) -> None:
        with slicer.util.tryWithErrorDisplay("Cannot add a box."):
            self.logic.addBox(self._parameterNode.inputVolume, self.ui.manualOrganSelector.currentText)
            self.refreshTable()

    def onDeleteBox(self) -> None:
        self.logic.deleteBox(self._parameterNode.inputVolume, self.ui.resultsTable.currentRow())
        self.refreshTable()

    def onUndo(self) -> None:
        self.logic.undoLastEdit()
        self.refreshTable()

    def onRemovePreview(self) -> None:
        self.logic.removePreview(self._parameterNode.inputVolume)

    def onExport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(
            None, "Export boxes", "", "OrganDETR JSON (*.json);;Slicer markups (*.mrk.json);;CSV (*.csv)"
        )
        if path:
            with slicer.util.tryWithErrorDisplay("Export failed."):
                self.logic.export(self._parameterNode.inputVolume, path)

    def onImport(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, "Import OrganDETR result", "", "OrganDETR JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("Import refused."):
                self.logic.importResult(self._parameterNode.inputVolume, path)
                self.logic.trackEdits(self._parameterNode.inputVolume, self.refreshTable)
                self.refreshTable()


class OrganDETRSlicerLogic(ScriptedLoadableModuleLogic):
    """Module logic: holds the embedded backend and the edit tracker, delegates to OrganDETRSlicerLib."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._embedded = None
        self._tracker = None

    def getParameterNode(self):
        return OrganDETRSlicerParameterNode(super().getParameterNode())

    def shutdown(self) -> None:
        """Stop the embedded backend (and every process it started)."""
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def client(self, remote, url, token, consent, python, model, device):
        from OrganDETRSlicerLib.backend_client import BackendClient, BackendError
        from OrganDETRSlicerLib.backend_process import BackendSettings, EmbeddedBackend

        if remote:
            if not consent:
                raise BackendError("Confirm that images may be sent to the remote server first.")
            return BackendClient(url, token)
        settings = BackendSettings(
            python=python or sys.executable,
            model=None if model == "Shipped default" else model,
            device=device,
        )
        if self._embedded is None or self._embedded.settings != settings:
            self.shutdown()
            self._embedded = EmbeddedBackend(settings)
        if not self._embedded.running:
            self._embedded.start()
        return self._embedded.client()

    @staticmethod
    def deviceDescription(health: dict) -> str:
        if health.get("device") == "cuda":
            free = health.get("gpu_memory_free_mb")
            memory = f", {free / 1024:.1f} GB free" if free else ""
            return f"Running on GPU: {health.get('device_name', 'CUDA')}{memory}"
        return "Running on CPU: detection takes longer than on a GPU."

    def startDetection(self, volumeNode, backendChoice: dict, segmentation: bool):
        from OrganDETRSlicerLib.detection_run import DetectionOptions, DetectionRun

        run = DetectionRun(
            slicer.mrmlScene, volumeNode, self.client(**backendChoice), DetectionOptions(segmentation=segmentation)
        )
        run.start()
        return run

    def runBatch(self, backendChoice: dict, progressDialog):
        from OrganDETRSlicerLib.batch import run_batch

        def onProgress(index, total, name, fraction, stage) -> None:
            progressDialog.labelText = f"{name} ({index + 1}/{total}): {stage}"
            progressDialog.value = int(100 * (index + fraction) / max(total, 1))
            slicer.app.processEvents()

        return run_batch(
            slicer.mrmlScene,
            self.client(**backendChoice),
            on_progress=onProgress,
            should_cancel=lambda: progressDialog.wasCanceled,
        )

    def trackEdits(self, volumeNode, onChange) -> None:
        from OrganDETRSlicerLib.edit_tracking import EditTracker
        from OrganDETRSlicerLib.roi_nodes import organdetr_rois

        if self._tracker is not None:
            self._tracker.untrack_all()
        self._tracker = EditTracker(volumeNode, onChange)
        self._tracker.track_all(organdetr_rois(slicer.mrmlScene, volumeNode))

    def undoLastEdit(self) -> None:
        if self._tracker is not None:
            self._tracker.undo_last_edit()

    def _rois(self, volumeNode) -> list:
        from OrganDETRSlicerLib.roi_nodes import organdetr_rois

        return organdetr_rois(slicer.mrmlScene, volumeNode) if volumeNode else []

    def tableRows(self, volumeNode) -> list[tuple[str, str, str, str]]:
        from OrganDETRSlicerLib.roi_nodes import roi_label, roi_score, roi_source

        return [
            (
                roi_label(roi),
                f"{roi_score(roi):.2f}",
                " x ".join(f"{size:.0f}" for size in roi.GetSize()),
                roi_source(roi),
            )
            for roi in self._rois(volumeNode)
        ]

    def organNames(self, volumeNode) -> list[str]:
        import json

        from OrganDETRSlicerLib.roi_nodes import RESULT_HEADER_ATTRIBUTE

        header = volumeNode.GetAttribute(RESULT_HEADER_ATTRIBUTE) if volumeNode else None
        return json.loads(header)["model"]["classes"] if header else []

    def centreViewsOn(self, volumeNode, row: int) -> None:
        rois = self._rois(volumeNode)
        if 0 <= row < len(rois):
            center = [0.0, 0.0, 0.0]
            rois[row].GetCenterWorld(center)
            slicer.modules.markups.logic().JumpSlicesToLocation(*center, True)

    def applyThreshold(self, volumeNode, threshold: float) -> None:
        from OrganDETRSlicerLib.roi_nodes import apply_score_threshold

        if volumeNode:
            apply_score_threshold(slicer.mrmlScene, volumeNode, threshold)

    def lockBoxes(self, volumeNode, locked: bool) -> None:
        from OrganDETRSlicerLib.roi_nodes import set_rois_locked

        if volumeNode:
            set_rois_locked(slicer.mrmlScene, volumeNode, locked)

    def addBox(self, volumeNode, organ: str):
        from OrganDETRSlicerLib.roi_nodes import add_manual_roi

        classes = self.organNames(volumeNode)
        if organ not in classes:
            raise ValueError("Run detection or import a result first, then choose the organ of the new box.")
        roi = add_manual_roi(slicer.mrmlScene, volumeNode, organ, classes.index(organ) + 1)
        if self._tracker is not None:
            self._tracker.track(roi)
        return roi

    def deleteBox(self, volumeNode, row: int) -> None:
        from OrganDETRSlicerLib.scene_nodes import remove_node

        rois = self._rois(volumeNode)
        if 0 <= row < len(rois):
            remove_node(slicer.mrmlScene, rois[row])

    def removePreview(self, volumeNode) -> None:
        from OrganDETRSlicerLib.segmentation_preview import remove_segmentation_preview

        if volumeNode:
            remove_segmentation_preview(slicer.mrmlScene, volumeNode)

    def export(self, volumeNode, path: str):
        from OrganDETRSlicerLib.results_io import export_boxes

        return export_boxes(slicer.mrmlScene, volumeNode, path)

    def importResult(self, volumeNode, path: str):
        from OrganDETRSlicerLib.results_io import import_boxes

        return import_boxes(slicer.mrmlScene, volumeNode, path)

    def installationPlan(self):
        from OrganDETRSlicerLib.dependency_installer import installed_versions, plan_installation

        return plan_installation(installed_versions(), already_imported=frozenset(sys.modules))

    def install(self, plan) -> None:
        from OrganDETRSlicerLib.dependency_installer import execute_plan

        def installTorch() -> None:
            import PyTorchUtils  # provided by the PyTorch extension (EXTENSION_DEPENDS)

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)

        execute_plan(plan, installTorch, lambda arguments: slicer.util.pip_install(arguments))

    def removeBackendPackage(self) -> None:
        from OrganDETRSlicerLib.dependency_installer import removal_pip_arguments

        self.shutdown()
        slicer.util.pip_uninstall(" ".join(removal_pip_arguments()[2:]))


class OrganDETRSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the real widget and logic on a synthetic volume, no backend needed."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_widget_and_manual_box()

    def test_widget_and_manual_box(self) -> None:
        import json

        import numpy as np
        from OrganDETRSlicerLib.roi_nodes import RESULT_HEADER_ATTRIBUTE, roi_source
        from OrganDETRSlicerLib.volume_geometry import volume_geometry

        self.delayDisplay("Starting the OrganDETR test")
        volume = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), dtype=np.int16), name="CT")
        geometry = volume_geometry(volume)
        header = {
            "image": {
                "source": "CT",
                "shape": list(geometry.shape),
                "spacing": list(geometry.spacing),
                "origin": list(geometry.origin),
                "direction": list(geometry.direction),
                "sha256": "0" * 64,
            },
            "model": {"name": "test", "version": "0", "weights_sha256": "0" * 64, "classes": ["Liver"]},
            "device": "cpu",
        }
        volume.SetAttribute(RESULT_HEADER_ATTRIBUTE, json.dumps(header))
        widget = slicer.modules.organdetrslicer.widgetRepresentation().self()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.refreshTable()
        widget.ui.manualOrganSelector.currentText = "Liver"
        widget.onAddBox()
        self.assertEqual(widget.ui.resultsTable.rowCount, 1)
        roi = slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")[0]
        self.assertEqual(roi_source(roi), "manual")
        self.assertTrue(vtk.vtkMath.Norm(roi.GetSize()) > 0)
        widget.ui.resultsTable.setCurrentCell(0, 0)
        widget.onDeleteBox()
        self.assertEqual(widget.ui.resultsTable.rowCount, 0)
        self.delayDisplay("Test passed")
