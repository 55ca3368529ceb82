"""Organ display names, anatomy colours and SNOMED-CT terminology codes for detected organs.

Colours follow the hues of Slicer's generic anatomy colour table (bones ivory, nerves and cord yellow, glands pink,
liver and spleen red-brown, vessels red); codes are SNOMED-CT concepts as used by DICOM segmentation terminology,
with the laterality modifiers SCT 24028007 (right) and SCT 7771000 (left). Organ names from any model are matched
after normalisation (case, separators, laterality word order), so "RightParotid" and "parotid_right" are the same
organ; unknown names get a stable colour from a fallback palette and no code.

The one source of organ colours: the Slicer module's boxes and segments and the exported ``.mrk.json`` files use
these, so an organ has the same colour everywhere. Pure Python, importable in Slicer without torch.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

CATEGORY_CODE = ("SCT", "123037004", "Anatomical Structure")
RIGHT_MODIFIER = ("SCT", "24028007", "Right")
LEFT_MODIFIER = ("SCT", "7771000", "Left")
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

Colour = tuple[float, float, float]
Code = tuple[str, str, str]


@dataclass(frozen=True)
class OrganTerm:
    """What Slicer shows for one organ: name, colour (0..1 RGB) and optional coded terminology."""

    display_name: str
    colour: Colour
    type_code: Code | None = None
    modifier: Code | None = None

    def terminology_entry(self) -> str:
        """Slicer's serialised terminology entry (the segment tag format), empty when the organ has no code."""
        if self.type_code is None:
            return ""
        category = "^".join(CATEGORY_CODE)
        type_ = "^".join(self.type_code)
        modifier = "^".join(self.modifier) if self.modifier else "^^"
        return f"{TERMINOLOGY_CONTEXT}~{category}~{type_}~{modifier}~{ANATOMIC_CONTEXT}~^^~^^"


def _rgb(red: int, green: int, blue: int) -> Colour:
    return (red / 255.0, green / 255.0, blue / 255.0)


# Keyed by normalised base organ name (see normalise_organ_name); laterality is handled separately.
_ORGANS: dict[str, tuple[str, Colour, Code]] = {
    "brainstem": ("Brainstem", _rgb(250, 250, 225), ("SCT", "15926001", "Brain stem")),
    "spinalcord": ("Spinal cord", _rgb(244, 214, 49), ("SCT", "2748008", "Spinal cord")),
    "parotid": ("Parotid gland", _rgb(220, 148, 163), ("SCT", "45289007", "Parotid gland")),
    "esophagus": ("Esophagus", _rgb(211, 171, 143), ("SCT", "32849002", "Esophagus")),
    "larynx": ("Larynx", _rgb(165, 116, 175), ("SCT", "4596009", "Larynx")),
    "mandible": ("Mandible", _rgb(241, 214, 145), ("SCT", "91609006", "Mandible")),
    "liver": ("Liver", _rgb(221, 130, 101), ("SCT", "10200004", "Liver")),
    "spleen": ("Spleen", _rgb(157, 108, 162), ("SCT", "78961009", "Spleen")),
    "kidney": ("Kidney", _rgb(185, 102, 83), ("SCT", "64033007", "Kidney")),
    "stomach": ("Stomach", _rgb(216, 132, 105), ("SCT", "69695003", "Stomach")),
    "pancreas": ("Pancreas", _rgb(249, 180, 111), ("SCT", "15776009", "Pancreas")),
    "gallbladder": ("Gallbladder", _rgb(139, 150, 98), ("SCT", "28231008", "Gallbladder")),
    "aorta": ("Aorta", _rgb(224, 97, 76), ("SCT", "15825003", "Aorta")),
    "heart": ("Heart", _rgb(206, 110, 84), ("SCT", "80891009", "Heart")),
    "lung": ("Lung", _rgb(197, 165, 145), ("SCT", "39607008", "Lung")),
    "urinarybladder": ("Urinary bladder", _rgb(222, 154, 132), ("SCT", "89837001", "Urinary bladder")),
    "duodenum": ("Duodenum", _rgb(255, 253, 229), ("SCT", "38848004", "Duodenum")),
}
_ALIASES = {"bladder": "urinarybladder", "oesophagus": "esophagus", "cord": "spinalcord"}

# Distinct, colour-blind friendly hues for organs the table does not know (Okabe-Ito plus two).
FALLBACK_PALETTE: tuple[Colour, ...] = (
    _rgb(230, 159, 0),
    _rgb(86, 180, 233),
    _rgb(0, 158, 115),
    _rgb(240, 228, 66),
    _rgb(0, 114, 178),
    _rgb(213, 94, 0),
    _rgb(204, 121, 167),
    _rgb(153, 153, 153),
)

_SIDE_WORDS = {"right": RIGHT_MODIFIER, "left": LEFT_MODIFIER, "r": RIGHT_MODIFIER, "l": LEFT_MODIFIER}


def _split_words(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # CamelCase -> words
    return [word for word in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if word]


def normalise_organ_name(name: str) -> tuple[str, Code | None]:
    """Base organ key (lower-case, no separators, no laterality) and the laterality modifier if any."""
    words = _split_words(name)
    side = None
    if len(words) > 1 and words[0] in _SIDE_WORDS:
        side = _SIDE_WORDS[words.pop(0)]
    elif len(words) > 1 and words[-1] in _SIDE_WORDS:
        side = _SIDE_WORDS[words.pop()]
    base = "".join(words)
    return _ALIASES.get(base, base), side


def organ_term(name: str) -> OrganTerm:
    """Display name, colour and terminology for an organ name as a model reports it."""
    base, side = normalise_organ_name(name)
    known = _ORGANS.get(base)
    if known is None:
        colour = FALLBACK_PALETTE[zlib.crc32(base.encode()) % len(FALLBACK_PALETTE)]
        return OrganTerm(display_name=name, colour=colour)
    display, colour, code = known
    if side is not None:
        display = f"{side[2]} {display[0].lower()}{display[1:]}"
    return OrganTerm(display_name=display, colour=colour, type_code=code, modifier=side)
