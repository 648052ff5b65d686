"""Which instances of a study are dermoscopic photographs, by their SOP Class UID: the two classes
``data.dicom`` reads (Dermoscopic Photography, VL Photographic). Everything else a study holds (a CT, a
report, a PDF, the results chaiderm itself stored) is skipped and counted by class, never decoded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from chaiderm.data.dicom import ACCEPTED

# DICOM JSON (PS3.18 F.2) tags QIDO-RS and WADO-RS metadata answer with
STUDY, SERIES, INSTANCE, SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
ROWS, COLUMNS, FRAMES = "00280010", "00280011", "00280008"


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance is: enough for WADO-RS to retrieve it, and nothing about the patient."""

    study: str
    series: str
    instance: str
    sop_class: str
    rows: int = 0  # from the search's answer where the PACS gives it (0: not said)
    columns: int = 0
    frames: int = 0

    @property
    def name(self) -> str:
        """How messages name it: its UID (never a patient's name or id)."""
        return f"instance {self.instance}"


@dataclass
class Selection:
    """The dermoscopic instances found, and the others by class name with their counts."""

    images: list[InstanceRef] = field(default_factory=list)
    others: list[InstanceRef] = field(default_factory=list)

    @property
    def skipped(self) -> Counter:
        """Class name -> instances of it passed over."""
        return Counter(class_name(r.sop_class) for r in self.others)

    def skipped_line(self) -> str | None:
        """The instances passed over in one line: their count per class and the first few by UID."""
        if not self.others:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.skipped.most_common())
        named = ", ".join(r.instance for r in self.others[:3]) + (" ..." if len(self.others) > 3 else "")
        return f"skipped {len(self.others)} instance(s) that are not dermoscopic photographs ({kinds}): {named}"


def class_name(uid: str) -> str:
    """'CT Image Storage' for its UID; the UID itself where pydicom does not know it."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "no SOP class")


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def _int(item: dict, tag: str) -> int:
    try:
        return int(_value(item, tag) or 0)
    except ValueError:
        return 0


def select_images(found: list[dict]) -> Selection:
    """Split DICOM JSON instance records (QIDO-RS results) into dermoscopic images and skipped classes;
    each instance once, in the order found."""
    out = Selection()
    seen: set[str] = set()
    for item in found:
        ref = InstanceRef(
            _value(item, STUDY),
            _value(item, SERIES),
            _value(item, INSTANCE),
            _value(item, SOP_CLASS),
            _int(item, ROWS),
            _int(item, COLUMNS),
            _int(item, FRAMES),
        )
        if not (ref.study and ref.series and ref.instance) or ref.instance in seen:
            continue
        seen.add(ref.instance)
        if ref.sop_class in ACCEPTED:
            out.images.append(ref)
        else:
            out.others.append(ref)
    return out
