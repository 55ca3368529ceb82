"""Organ names, colours and SNOMED-CT codes: one table for the Slicer module and the exported files."""

from __future__ import annotations

from organdetr_backend.organ_terminology import FALLBACK_PALETTE, organ_term


def test_terminology_normalises_names_and_falls_back():
    right, left = organ_term("RightParotid"), organ_term("parotid_left")
    assert right.type_code == left.type_code == ("SCT", "45289007", "Parotid gland")
    assert right.modifier[2] == "Right" and left.modifier[2] == "Left"
    assert right.display_name == "Right parotid gland"
    assert "SCT^45289007^Parotid gland~SCT^24028007^Right" in right.terminology_entry()
    assert organ_term("SpinalCord").type_code[1] == organ_term("spinal_cord").type_code[1] == "2748008"
    unknown = organ_term("tumour_bed")
    assert unknown.type_code is None and unknown.terminology_entry() == ""
    assert unknown.colour in FALLBACK_PALETTE and organ_term("tumour_bed").colour == unknown.colour
