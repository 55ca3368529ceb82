"""The shipped model says which organs are in a scan: bundled scans cut as radiologists' scans end.

OpenKBP pt_201 (a validation case) whole, cut below the head and cut above the larynx (``Testing/presence_cuts.py``
makes the cuts from the case's own label map), and an upper-abdomen slab where no head-and-neck organ exists.

Every organ that is in the scan is judged present and every one that is not, absent. Before 2.5.0 the shipped model
did not reliably tell a mandible that ends right at the scan's edge from one just beyond it (2 of 22 validation scans
cut below the head), and the test skipped that organ's absence; 2.5.0 to 2.9.0 report none of the 80 absent organs
of those scans (model card), so every organ is checked.
"""

from __future__ import annotations

import pytest
import SimpleITK as sitk
from organdetr_backend.image_io import LoadedImage, read_image
from organdetr_backend.predictor import Predictor
from presence_cuts import CUTS, cut_case, presence_truth


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor(None, device="cpu")


def _judged_present(predictor: Predictor, image: sitk.Image) -> dict[str, bool]:
    result = predictor.predict(LoadedImage(image=image, source="test"), top_k=1, include_absent=True).result
    assert {a.label for a in result.absent} == {d.label for d in result.detections if not d.present}
    return {d.label: d.present for d in result.detections}


@pytest.mark.parametrize("cut", CUTS)
def test_organs_of_a_cut_head_and_neck_scan(shipped, head_neck_case, cut):
    ct_path, label_path = head_neck_case
    image, label = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(label_path))
    names = shipped.config.class_names
    cut_image, cut_label = cut_case(image, label, cut, names)
    truth = presence_truth(label, cut_label, names, names)
    judged = _judged_present(shipped, cut_image)
    checked = {organ: present for organ, present in truth.items() if present is not None}
    wrong = {organ: judged[organ] for organ, present in checked.items() if judged[organ] != present}
    assert not wrong, f"{cut}: truth {truth}, judged {judged}"
    assert cut != "below_head" or not all(checked.values())  # the head's organs are checked as absent


def test_no_head_and_neck_organ_in_an_abdominal_scan(shipped, small_abdomen_ct):
    judged = _judged_present(shipped, read_image(small_abdomen_ct).image)
    # The slab holds the spinal cord and the lower esophagus (TotalSegmentator labels both), which may be reported;
    # the five organs of the head and neck alone must not be.
    reported = [organ for organ, present in judged.items() if present and organ not in ("SpinalCord", "Esophagus")]
    assert not reported
