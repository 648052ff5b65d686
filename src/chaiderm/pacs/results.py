"""What chaiderm concluded about one PACS image, as DICOM objects the PACS's viewers show beside it:

- a Comprehensive SR (``highdicom``): the vote per diagnosis in codes, the k nearest archive cases with
  their distances, the novelty and prediction set where the result carries them, the model's weights
  digest, the archive's identity and the software version, referencing the source image;
- a Secondary Capture of the evidence (the query, its nearest archive cases, the QAM/RAM of the nearest
  pairs) with "decision support, not a diagnosis" burned into its pixels and said in its descriptions.

Both go into the source's study, in new series of their own (an SR series and a capture series: DICOM
gives each series one modality). Both are marked unverified and preliminary: no person signed them.

Codes: SNOMED CT where pydicom's own DICOM code tables (or the clinical terminology references noted at
``DIAGNOSIS_CODES``) give the concept; other concepts in the private scheme ``99CHAIDERM``, declared in the
object's Coding Scheme Identification Sequence."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

SCHEME = "99CHAIDERM"
NOTICE = "Decision support, not a diagnosis"
MANUFACTURER = "chaiderm"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9701, 9702  # high numbers: the new series sort after the acquired ones
SHOWN_PAIRS = 3  # QAM/RAM pairs in the capture: the nearest three; the SR lists all k neighbours


def _private(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


# SNOMED CT concepts of the diagnoses an archive holds (``data.diagnoses`` names). Melanoma, actinic
# keratosis and squamous cell carcinoma of skin are pydicom's DICOM code tables' own; melanocytic naevus
# (400096001) and basal cell carcinoma of skin (254701007) are the SNOMED CT concepts clinical code lists
# use. Seborrheic keratosis and the rest have no code here that could be checked against a terminology
# server on this machine: they stay in the private scheme rather than carry a guessed SNOMED code.
DIAGNOSIS_CODES = {
    "melanoma": Code("1162635006", "SCT", "Malignant melanoma"),
    "nevus": Code("400096001", "SCT", "Melanocytic naevus"),
    "actinic_keratosis": Code("201101007", "SCT", "Actinic keratosis"),
    "squamous_cell_carcinoma": Code("254651007", "SCT", "Squamous cell carcinoma of skin"),
    "basal_cell_carcinoma": Code("254701007", "SCT", "Basal cell carcinoma of skin"),
}

ROOT = _private("CHD001", "Dermoscopy retrieval decision support")
VOTE = _private("CHD002", "Vote share of the nearest archive cases")
NEIGHBOURS = _private("CHD003", "Nearest archive cases")
NEIGHBOUR = _private("CHD004", "Archive case")
CASE_ID = _private("CHD005", "Archive case identifier")
DISTANCE = _private("CHD006", "Squared embedding distance")
RANK = _private("CHD007", "Rank")
WEIGHTS = _private("CHD008", "Model weights digest")
ARCHIVE = _private("CHD009", "Archive identity")
K = _private("CHD010", "Number of nearest cases voting")
NOVELTY = _private("CHD011", "Novelty")
PREDICTION_SET = _private("CHD012", "Prediction set")
DISCLAIMER = _private("CHD013", "Intended use")
NOVELTY_DETAIL = _private("CHD014", "Novelty detail")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
FINDING = Code("121071", "DCM", "Finding")
SOURCE = Code("121112", "DCM", "Source of Measurement")
RATIO = Code("1", "UCUM", "no units")


# the private codes of the others: the ISIC challenges' abbreviations, "DX-" before them
PRIVATE_DIAGNOSES = {
    "seborrheic_keratosis": "SK",
    "benign_keratosis": "BKL",
    "dermatofibroma": "DF",
    "vascular_lesion": "VASC",
    "solar_lentigo": "SL",
    "lichenoid_keratosis": "LK",
    "unknown": "UNK",
}


def diagnosis_code(diagnosis: str) -> Code:
    """The diagnosis's SNOMED CT concept, or its private code (meaning: the diagnosis's chaiderm name)."""
    if diagnosis in DIAGNOSIS_CODES:
        return DIAGNOSIS_CODES[diagnosis]
    value = PRIVATE_DIAGNOSES.get(diagnosis) or hashlib.sha256(diagnosis.encode()).hexdigest()[:8].upper()
    return _private(f"DX-{value}", diagnosis.replace("_", " ")[:64])


@dataclass(frozen=True)
class Identity:
    """Which model and which archive answered, and which chaiderm."""

    weights_digest: str
    archive: str  # "<n> cases, <digest>": the archive's cases and their labels, hashed
    version: str

    @classmethod
    def of(cls, predictor) -> Identity:
        from chaiderm import __version__

        ix = predictor.index
        h = hashlib.sha256()
        for row in zip(ix.image_ids, ix.diagnoses, strict=True):
            h.update(repr(row).encode())
        return cls(
            str(ix.info.get("model_digest", "")) or "unknown",
            f"{len(ix)} cases, {h.hexdigest()[:16]}",
            f"chaiderm {__version__}",
        )


def _text(name: Code, value: str):
    import highdicom as hd

    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type="CONTAINS")


def _num(name: Code, value: float, rel: str = "CONTAINS"):
    import highdicom as hd

    return hd.sr.NumContentItem(name=name, value=float(value), unit=RATIO, relationship_type=rel)


def _container(name: Code, items: list, root: bool = False):
    import highdicom as hd

    box = hd.sr.ContainerContentItem(name=name, relationship_type=None if root else "CONTAINS")
    box.ContentSequence = hd.sr.ContentSequence(items)
    return box


def _optional_items(result) -> list:
    """Novelty and prediction set, where the result carries them (absent from older results)."""
    import highdicom as hd

    items = []
    novelty = getattr(result, "novelty", None)
    if novelty is not None:
        score = getattr(novelty, "score", novelty)
        if isinstance(score, int | float | np.floating):
            items.append(_num(NOVELTY, float(score)))
        if dataclasses.is_dataclass(novelty):
            for key, value in dataclasses.asdict(novelty).items():
                if key != "score" and isinstance(value, str | int | float | bool):
                    items.append(_text(NOVELTY_DETAIL, f"{key}: {value}"))
    pset = getattr(result, "prediction_set", None)
    members = getattr(pset, "classes", pset)
    if members is not None and not isinstance(members, str):
        codes = [
            hd.sr.CodeContentItem(name=PREDICTION_SET, value=diagnosis_code(str(d)), relationship_type="CONTAINS")
            for d in members
        ]
        items.append(_container(PREDICTION_SET, codes))
    return items


def result_sr(source: Dataset, result, identity: Identity, *, series_uid: str, instance_number: int = 1):
    """The Comprehensive SR of one answered image (``result``: a ``pipeline.QueryResult``)."""
    import highdicom as hd

    pred = result.prediction
    top = max(pred.class_probabilities, key=lambda d: pred.class_probabilities[d])
    votes = [_num(diagnosis_code(d), p) for d, p in pred.class_probabilities.items()]
    neighbours = [
        _container(
            NEIGHBOUR,
            [
                _num(RANK, n.rank),
                _text(CASE_ID, n.image_id),
                hd.sr.CodeContentItem(name=FINDING, value=diagnosis_code(n.diagnosis), relationship_type="CONTAINS"),
                _num(DISTANCE, n.distance),
            ],
        )
        for n in pred.neighbors
    ]
    items = [
        _text(
            DISCLAIMER,
            f"{NOTICE}: the diagnoses of the archive cases nearest to this image, for a clinician "
            "to weigh; it has not been reviewed by a person.",
        ),
        hd.sr.ImageContentItem(
            name=SOURCE,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type="CONTAINS",
        ),
        _text(ALGORITHM_NAME, f"chaiderm kNN vote ({pred.vote})"),
        _text(ALGORITHM_VERSION, identity.version),
        _text(WEIGHTS, identity.weights_digest),
        _text(ARCHIVE, identity.archive),
        _num(K, pred.k),
        hd.sr.CodeContentItem(name=FINDING, value=diagnosis_code(top), relationship_type="CONTAINS"),
        _container(VOTE, votes),
        *_optional_items(result),
        _container(NEIGHBOURS, neighbours),
    ]
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=_container(ROOT, items, root=True),
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"chaiderm results ({NOTICE.lower()})",
    )
    _declare_scheme(sr)
    sr.SoftwareVersions = _software()
    return sr


def _software() -> str:
    from chaiderm import __version__

    return f"chaiderm {__version__}"


def _declare_scheme(ds: Dataset) -> None:
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "chaiderm decision support concepts"
    scheme.CodingSchemeResponsibleOrganization = "chaiderm project"
    ds.CodingSchemeIdentificationSequence = [scheme]


def evidence_image(query: np.ndarray, neighbours: Sequence[np.ndarray], result, side: int = 160) -> np.ndarray:
    """One RGB picture: a banner saying what it is, the query beside its nearest cases (each captioned with
    its rank, diagnosis and distance), and under them the QAM/RAM of the nearest pairs."""
    from PIL import Image, ImageDraw

    from chaiderm.evidence.render import overlay

    def tile(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).convert("RGB").resize((side, side), Image.BILINEAR))

    pred = result.prediction
    n = min(len(neighbours), 5)
    pairs = min(n, SHOWN_PAIRS, len(result.qams))
    cols = max(1 + n, 2 * pairs, 2)
    banner, caption = 56, 16
    height = banner + side + caption + (side + caption if pairs else 0)
    canvas = Image.new("RGB", (cols * side, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, cols * side, banner - 4], fill=(180, 0, 0))
    draw.text((6, 4), f"{NOTICE.upper()}", fill=(255, 255, 255))
    draw.text((6, 20), f"chaiderm: {pred.summary()}"[:140], fill=(255, 255, 255))
    draw.text((6, 36), "nearest archive cases and where query and case look alike (QAM/RAM)", fill=(255, 255, 255))
    q = tile(query)
    canvas.paste(Image.fromarray(q), (0, banner))
    draw.text((4, banner + side), "query", fill=(0, 0, 0))
    for i in range(n):
        nb = pred.neighbors[i]
        canvas.paste(Image.fromarray(tile(neighbours[i])), ((i + 1) * side, banner))
        label = f"#{nb.rank} d={nb.distance:.2f} {nb.diagnosis.replace('_', ' ')}"
        draw.text(((i + 1) * side + 4, banner + side), label[:30], fill=(0, 0, 0))
    y = banner + side + caption
    for i in range(pairs):
        r = tile(neighbours[i])
        canvas.paste(Image.fromarray(overlay(q, result.qams[i])), (2 * i * side, y))
        canvas.paste(Image.fromarray(overlay(r, result.rams[i])), ((2 * i + 1) * side, y))
        draw.text((2 * i * side + 4, y + side), f"#{i + 1} QAM | RAM", fill=(0, 0, 0))
    return np.asarray(canvas)


def evidence_capture(source: Dataset, picture: np.ndarray, *, series_uid: str, instance_number: int = 1):
    """The Secondary Capture of ``picture`` (:func:`evidence_image`) in the source's study."""
    import highdicom as hd

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(picture, np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # highdicom asks for one; replaced by "unknown" below
    )
    sc.PatientOrientation = ""  # type 2: a montage of photographs has no orientation to the patient
    sc.SeriesDescription = f"chaiderm evidence ({NOTICE.lower()})"
    sc.ImageComments = f"{NOTICE}. Nearest archive cases and their activation maps, by chaiderm."
    sc.BurnedInAnnotation = "YES"
    # type 2C, the lesion's side where the source says it; empty (unknown) otherwise
    side = str(getattr(source, "Laterality", "") or getattr(source, "ImageLaterality", "") or "")
    sc.Laterality = side if side in ("R", "L") else ""
    sc.SoftwareVersions = _software()
    sc.DerivationDescription = "chaiderm evidence: query, nearest archive cases, QAM/RAM of the nearest pairs"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def study_results(
    sources: Sequence[Dataset],
    results: Sequence,
    neighbour_images: Sequence[Sequence[np.ndarray]],
    identity: Identity,
) -> list[Dataset]:
    """An SR and a capture for each answered image, in two new series of the study (one of each kind)."""
    import highdicom as hd

    sr_series, sc_series = hd.UID(), hd.UID()
    out: list[Dataset] = []
    for i, (src, res, neigh) in enumerate(zip(sources, results, neighbour_images, strict=True), start=1):
        out.append(result_sr(src, res, identity, series_uid=sr_series, instance_number=i))
        picture = evidence_image(res.image, neigh, res)
        out.append(evidence_capture(src, picture, series_uid=sc_series, instance_number=i))
    return out
