"""OrganDETR: detect organs in CT as boxes, review and correct them, export them.

The widget only wires the UI to the logic; the behaviour lives in OrganDETRSlicerLib (GUI-free, tested with
slicer-core) and the torch-free organdetr_client package shipped next to this file. Nothing heavy happens at import
time, and nothing waits on the GUI thread: backend start, uploads, polling and batch runs happen on a worker thread
that a timer looks at.
"""

import os
import shutil
import sys
from typing import Annotated

import qt
import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

sys.path.insert(0, os.path.dirname(__file__))  # OrganDETRSlicerLib and organdetr_client next to this file

TICK_INTERVAL_MS = 100  # how often the GUI looks at the background work
DEVICE_CHOICES = {"Auto": "auto", "GPU": "cuda", "CPU": "cpu"}
EXPORT_FILTERS = ("OrganDETR JSON (*.json)", "Slicer markups (*.mrk.json)", "CSV (*.csv)")
# Active only while the module is shown, and only when the keyboard focus is in the module panel.
PANEL_SHORTCUTS = (("Ctrl+Shift+D", "onApplyOrCancel"), ("Ctrl+Shift+B", "onAddBox"), ("Ctrl+Z", "onUndo"))


class OrganDETRSlicer(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "OrganDETR"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["OrganDETR for 3D Slicer developers"]
        self.parent.helpText = (
            "Detect organs in a CT volume as boxes (one ROI per organ), review and correct them, and export them as "
            "JSON, Slicer markups or CSV. Shortcuts while the keyboard focus is in this panel: Ctrl+Shift+D detect "
            "or cancel, Ctrl+Shift+B add box, Ctrl+Z undo the last box edit, Delete (in the table) delete the box."
        )
        self.parent.acknowledgementText = (
            "Organ-DETR (Ghahremani et al., IEEE TMI); test data from TotalSegmentator and OpenKBP "
            "(see the repository README)."
        )


@parameterNodeWrapper
class OrganDETRSlicerParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    modelFolder: str = ""  # a checkpoint folder; empty: the shipped default model
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    pythonExecutable: str = ""  # empty: Slicer's own Python
    serverUrl: str = ""
    remoteConsent: bool = False
    scoreThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.3
    segmentationPreview: bool = False
    includeAbsent: bool = False
    lockBoxes: bool = False


def connectGui(parameterNode, ui):
    """``parameterNode.connectGui(ui)``, returning the tag that ``disconnectGui`` needs: Slicer 5.8.0's connectGui
    returns None (fixed in 5.10), so there the tag is the one the wrapper just used."""
    tag = parameterNode.connectGui(ui)
    return tag if tag is not None else parameterNode._nextParameterGUIsTag - 1


class OrganDETRSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: reads the controls, calls the logic, shows what it returns."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
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
        self._timer.setInterval(TICK_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTick)

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
        for keys, slotName in PANEL_SHORTCUTS:
            self._shortcuts.append(self._shortcut(keys, self.parent, qt.Qt.WidgetWithChildrenShortcut, slotName))
        # Delete only when the table has the focus: the views and markups widgets keep their own Delete.
        self._shortcuts.append(self._shortcut("Delete", self.ui.resultsTable, qt.Qt.WidgetShortcut, "onDeleteBox"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateBackendControls()

    def _shortcut(self, keys: str, parent, context, slotName: str):
        shortcut = qt.QShortcut(qt.QKeySequence(keys), parent)
        shortcut.setContext(context)
        shortcut.setEnabled(False)  # enabled by enter(), disabled by exit()
        shortcut.connect("activated()", getattr(self, slotName))
        return shortcut

    def cleanup(self) -> None:
        self.removeObservers()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
        self._shortcuts = []
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)

    def exit(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = self.logic.defaultInputVolume()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectGui(self._parameterNode, self.ui)
        self.refreshTable()

    def inputVolume(self):
        return self._parameterNode.inputVolume if self._parameterNode else None

    # --- backend ------------------------------------------------------------------------------------------------

    def backendChoice(self):
        parameters = self._parameterNode
        return self.logic.backendChoice(
            remote=self.ui.remoteBackendRadio.checked,
            url=parameters.serverUrl.strip(),
            token=self.ui.tokenEdit.text.strip(),
            consent=parameters.remoteConsent,
            python=parameters.pythonExecutable.strip(),
            modelFolder=parameters.modelFolder.strip(),
            device=DEVICE_CHOICES[parameters.device],
        )

    def updateBackendControls(self, *_args) -> None:
        remote = self.ui.remoteBackendRadio.checked
        for name in ("serverUrlEdit", "tokenEdit", "testConnectionButton", "consentLabel", "remoteConsentCheckBox"):
            getattr(self.ui, name).setEnabled(remote)
        self.ui.pythonPathEdit.setEnabled(not remote)

    def onTestConnection(self) -> None:
        self.ui.connectionStatusLabel.text = "Connecting..."
        with slicer.util.tryWithErrorDisplay("Connection failed."):
            self.logic.checkConnection(self.backendChoice(), self.onConnectionChecked, self.onConnectionFailed)
            self._timer.start()

    def onConnectionChecked(self, health) -> None:
        self.ui.connectionStatusLabel.text = "Connected: OrganDETR " + health["version"]
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription(health)

    def onConnectionFailed(self, error) -> None:
        self.ui.connectionStatusLabel.text = ""
        slicer.util.errorDisplay(f"Connection failed.\n\n{error}")

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay("Installation failed."):
            plan = self.logic.installationPlan(embedded=not self.ui.remoteBackendRadio.checked)
            if plan.nothing_to_do:
                slicer.util.infoDisplay(plan.summary())
                return
            if not slicer.util.confirmOkCancelDisplay(plan.summary(), "Install OrganDETR dependencies"):
                return
            self.logic.install(plan)
            if plan.restart_required:
                slicer.util.infoDisplay("Installed. Please restart Slicer.")

    def onRemoveDependencies(self) -> None:
        if slicer.util.confirmOkCancelDisplay("Remove the OrganDETR backend package from Slicer's Python?"):
            with slicer.util.tryWithErrorDisplay("Removal failed."):
                self.logic.removeBackendPackage()

    def onChooseModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "OrganDETR checkpoint folder")
        if folder and self._parameterNode:
            self._parameterNode.modelFolder = folder

    # --- detection ----------------------------------------------------------------------------------------------

    def onApplyOrCancel(self) -> None:
        if self.logic.running:
            self.logic.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Detection could not start."):
            self.logic.startDetection(self.inputVolume(), self.backendChoice(), self.detectionOptions())
            self.showRunning()

    def onBatch(self) -> None:
        with slicer.util.tryWithErrorDisplay("Batch detection could not start."):
            self.logic.startBatch(self.backendChoice(), self.detectionOptions())
            self.showRunning()

    def detectionOptions(self):
        parameters = self._parameterNode
        return self.logic.detectionOptions(
            parameters.segmentationPreview, parameters.includeAbsent, parameters.scoreThreshold
        )

    def showRunning(self) -> None:
        self.ui.applyButton.text = "Cancel"
        self.ui.batchButton.enabled = False
        self.ui.progressBar.value = 0
        self._timer.start()

    def onTick(self) -> None:
        progress = self.logic.tick()
        if not self.logic.busy:
            self._timer.stop()
        if progress is None:
            return
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.statusLabel.text = progress.words
        health = self.logic.taskHealth()
        if health is not None:
            self.ui.deviceInfoLabel.text = self.logic.deviceDescription(health)
        if progress.ended:
            self.onTaskEnded()

    def onTaskEnded(self) -> None:
        self.ui.applyButton.text = "Detect organs"
        self.ui.batchButton.enabled = True
        report = self.logic.finishTask(self.inputVolume(), self.refreshTable)
        self.refreshTable()
        if report:
            slicer.util.infoDisplay(report)

    # --- review and correction ----------------------------------------------------------------------------------

    def onVolumeChanged(self, _node) -> None:
        self.refreshTable()

    def refreshTable(self, *_args) -> None:
        volume = self.inputVolume()
        rows = self.logic.tableRows(volume)
        table = self.ui.resultsTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            for column, text in enumerate(row):
                table.setItem(index, column, qt.QTableWidgetItem(text))
        self.ui.absentLabel.text = self.logic.absentText(volume)
        self.ui.manualOrganSelector.clear()
        self.ui.manualOrganSelector.addItems(self.logic.organNames(volume))

    def onRowClicked(self, row, _column) -> None:
        self.logic.centreViewsOn(self.inputVolume(), row)

    def onThresholdChanged(self, value) -> None:
        self.logic.applyThreshold(self.inputVolume(), value)

    def onLockToggled(self, locked) -> None:
        self.logic.lockBoxes(self.inputVolume(), locked)

    def onAddBox(self) -> None:
        with slicer.util.tryWithErrorDisplay("Cannot add a box."):
            self.logic.addBox(self.inputVolume(), self.ui.manualOrganSelector.currentText)
            self.refreshTable()

    def onDeleteBox(self) -> None:
        self.logic.deleteBox(self.inputVolume(), self.ui.resultsTable.currentRow())
        self.refreshTable()

    def onUndo(self) -> None:
        self.logic.undoLastEdit()
        self.refreshTable()

    def onRemovePreview(self) -> None:
        self.logic.removePreview(self.inputVolume())

    def onExport(self) -> None:
        dialog = qt.QFileDialog(None, "Export boxes")
        dialog.setAcceptMode(qt.QFileDialog.AcceptSave)
        dialog.setNameFilters(list(EXPORT_FILTERS))
        dialog.setDefaultSuffix("json")
        if not dialog.exec_():
            return
        path = self.logic.exportPath(dialog.selectedFiles()[0], dialog.selectedNameFilter())
        with slicer.util.tryWithErrorDisplay("Export failed."):
            self.logic.export(self.inputVolume(), path)

    def onImport(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, "Import OrganDETR result", "", EXPORT_FILTERS[0])
        if path:
            with slicer.util.tryWithErrorDisplay("Import refused."):
                self.logic.importResult(self.inputVolume(), path, self.refreshTable)
                self.refreshTable()


class OrganDETRSlicerLogic(ScriptedLoadableModuleLogic):
    """Module logic: Slicer's side of OrganDETRSlicerLib's DetectionSession (scene, installs, views)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from OrganDETRSlicerLib.session import DetectionSession

        self.session = DetectionSession(slicer.mrmlScene)

    def getParameterNode(self):
        return OrganDETRSlicerParameterNode(super().getParameterNode())

    def shutdown(self) -> None:
        """Cancel, remove observers, stop the embedded backend (and every process it started)."""
        self.session.shutdown()

    @staticmethod
    def defaultInputVolume():
        """The volume shown in the red slice view, or the scene's first scalar volume (no views without a main
        window)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            background = layoutManager.sliceWidget("Red").sliceLogic().GetBackgroundLayer().GetVolumeNode()
            if background is not None and background.IsA("vtkMRMLScalarVolumeNode"):
                return background
        return slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    @staticmethod
    def backendChoice(remote, url, token, consent, python, modelFolder, device):
        from OrganDETRSlicerLib.backend_process import BackendSettings
        from OrganDETRSlicerLib.session import BackendChoice

        slicerPython = shutil.which("PythonSlicer") or sys.executable
        # Another Python must not inherit Slicer's PYTHONHOME / PYTHONPATH: give it Slicer's startup environment.
        environment = None if not python else tuple(sorted(slicer.util.startupEnvironment().items()))
        settings = BackendSettings(
            python=python or slicerPython, model=modelFolder or None, device=device, environment=environment
        )
        return BackendChoice(remote=remote, url=url, token=token, consent=consent, embedded=settings)

    @staticmethod
    def detectionOptions(segmentation, includeAbsent, scoreThreshold):
        from organdetr_client.http_client import DetectionRequest
        from OrganDETRSlicerLib.detection_run import DetectionOptions

        request = DetectionRequest(segmentation=segmentation, include_absent=includeAbsent)
        return DetectionOptions(request=request, score_threshold=scoreThreshold)

    def checkConnection(self, backendChoice, onHealth, onError) -> None:
        connect = self.session.connector(backendChoice)
        self.session.call(lambda: connect()[1], onHealth, onError)

    @staticmethod
    def deviceDescription(health: dict) -> str:
        if health.get("device") == "cuda":
            free = health.get("gpu_memory_free_mb")
            memory = f", {free / 1024:.1f} GB free" if free else ""
            return f"Running on GPU: {health.get('device_name', 'CUDA')}{memory}"
        return "Running on CPU: detection takes longer than on a GPU."

    def startDetection(self, volumeNode, backendChoice, options):
        return self.session.start_detection(volumeNode, backendChoice, options)

    def startBatch(self, backendChoice, options):
        from OrganDETRSlicerLib.batch import scalar_volumes

        return self.session.start_batch(scalar_volumes(slicer.mrmlScene), backendChoice, options)

    @property
    def running(self) -> bool:
        task = self.session.task
        return task is not None and not task.ended

    @property
    def busy(self) -> bool:
        return self.session.busy

    def tick(self):
        return self.session.tick()

    def cancel(self) -> None:
        self.session.cancel()

    def taskHealth(self):
        return self.session.task.health if self.session.task is not None else None

    def finishTask(self, volumeNode, onEdit) -> str:
        """After a task ended: track edits of the new boxes; returns the batch report ("" for one volume)."""
        from OrganDETRSlicerLib.batch import BatchTask

        task = self.session.task
        if volumeNode is not None:
            self.session.track_edits(volumeNode, onEdit)
        if isinstance(task, BatchTask):
            return "\n".join(task.report.lines()) or "No volumes."
        return ""

    def undoLastEdit(self) -> None:
        self.session.undo_last_edit()

    def _rois(self, volumeNode) -> list:
        from OrganDETRSlicerLib.roi_nodes import organdetr_rois

        return organdetr_rois(slicer.mrmlScene, volumeNode) if volumeNode else []

    def tableRows(self, volumeNode) -> list:
        from OrganDETRSlicerLib.roi_nodes import roi_label, roi_present, roi_score, roi_source

        return [
            (
                roi_label(roi),
                f"{roi_score(roi):.2f}" + ("" if roi_present(roi) else " (absent)"),
                " x ".join(f"{size:.0f}" for size in roi.GetSize()),
                roi_source(roi),
            )
            for roi in self._rois(volumeNode)
        ]

    def absentText(self, volumeNode) -> str:
        from OrganDETRSlicerLib.roi_nodes import absent_organs

        absent = absent_organs(slicer.mrmlScene, volumeNode) if volumeNode else []
        return "Not in this scan: " + ", ".join(absent) if absent else ""

    def organNames(self, volumeNode) -> list:
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
        self.session.track_new_box(roi)
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

    @staticmethod
    def exportPath(path: str, nameFilter: str) -> str:
        from OrganDETRSlicerLib.results_io import with_export_ending

        return str(with_export_ending(path, nameFilter))

    def export(self, volumeNode, path: str):
        from OrganDETRSlicerLib.results_io import export_boxes

        return export_boxes(slicer.mrmlScene, volumeNode, path)

    def importResult(self, volumeNode, path: str, onEdit):
        from OrganDETRSlicerLib.results_io import import_boxes

        rois = import_boxes(slicer.mrmlScene, volumeNode, path)
        self.session.track_edits(volumeNode, onEdit)
        return rois

    def installationPlan(self, embedded: bool):
        from pathlib import Path

        from organdetr_client import __version__
        from OrganDETRSlicerLib.dependency_installer import find_backend_source, installed_versions, plan_installation

        source = find_backend_source(Path(__file__).resolve().parent) if embedded else None
        return plan_installation(
            installed_versions(), embedded, source, __version__, already_imported=frozenset(sys.modules)
        )

    def install(self, plan) -> None:
        from OrganDETRSlicerLib.dependency_installer import execute_plan

        def installTorch() -> None:
            import PyTorchUtils  # provided by the PyTorch extension (EXTENSION_DEPENDS)

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch could not be installed by the PyTorch extension")

        self.session.stop_backend()
        with slicer.util.WaitCursor():
            execute_plan(plan, installTorch, slicer.util.pip_install)

    def removeBackendPackage(self) -> None:
        from OrganDETRSlicerLib.dependency_installer import removal_requirements

        stopping = self.session.stop_backend()
        if stopping is not None:
            stopping.join()
        slicer.util.pip_uninstall(removal_requirements())


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
            "absent": [{"label": "Spleen", "class_id": 2, "presence": 0.1}],
        }
        volume.SetAttribute(RESULT_HEADER_ATTRIBUTE, json.dumps(header))
        slicer.util.selectModule("OrganDETRSlicer")
        widget = slicer.modules.organdetrslicer.widgetRepresentation().self()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.refreshTable()
        self.assertEqual(widget.ui.absentLabel.text, "Not in this scan: Spleen")
        widget.ui.manualOrganSelector.currentText = "Liver"
        widget.onAddBox()
        self.assertEqual(widget.ui.resultsTable.rowCount, 1)
        roi = slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")[0]
        self.assertEqual(roi_source(roi), "manual")
        self.assertTrue(all(size > 0 for size in roi.GetSize()))
        widget.ui.resultsTable.setCurrentCell(0, 0)
        widget.onDeleteBox()
        self.assertEqual(widget.ui.resultsTable.rowCount, 0)
        self.assertTrue(all(shortcut.enabled for shortcut in widget._shortcuts))
        slicer.util.selectModule("Data")
        self.assertFalse(any(shortcut.enabled for shortcut in widget._shortcuts))
        self.delayDisplay("Test passed")
