"""DICOM dermoscopy in, as archive cases and as queries; other classes and broken files refused by name."""

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, DermoscopicPhotographyImageStorage, ExplicitVRLittleEndian, generate_uid

from chaiderm.data.images import UPLOAD_FORMATS, load_image
from chaiderm.data.records import load_table
from chaiderm.errors import DataError


def write_dicom(path, pixels, sop=DermoscopicPhotographyImageStorage, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dermoscopic_dicom_reads_as_rgb_with_its_tags(tmp_path):
    a = np.zeros((48, 64, 3), np.uint8)
    a[10:20, 30:40] = (200, 50, 20)
    site = Dataset()
    site.CodeMeaning = "Back"
    p = write_dicom(
        tmp_path / "a.dcm",
        a,
        LesionNumber=3,
        PatientID="P-17",
        PatientSex="F",
        PatientAge="055Y",
        AnatomicRegionSequence=Sequence([site]),
    )
    assert np.array_equal(load_image(p), a)
    from chaiderm.data.dicom import dicom_metadata

    assert dicom_metadata(p) == {
        "patient_id": "P-17",
        "lesion_id": "P-17/3",
        "sex": "female",
        "age": "55",
        "site": "Back",
    }


def test_dicom_archive_cases_carry_their_tags(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i, sex in ((0, "M"), (1, "F")):
        write_dicom(
            tmp_path / "images" / f"c{i}.dcm", rng.integers(0, 255, (40, 40, 3)), PatientSex=sex, PatientID=f"P{i}"
        )
    (tmp_path / "labels.csv").write_text("image_id,diagnosis,age\nc0,mel,40\nc1,nv,61\n")
    t = load_table(tmp_path)
    assert t.diagnoses == ["melanoma", "nevus"] and t.paths[0].endswith(".dcm")
    assert t.metadata == [
        {"age": "40", "sex": "male", "patient_id": "P0"},
        {"age": "61", "sex": "female", "patient_id": "P1"},
    ]


def test_other_dicom_classes_and_broken_files_are_refused(tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", np.zeros((32, 32, 3)), sop=CTImageStorage)
    with pytest.raises(DataError, match=r"ct.dcm: DICOM class 1.2.840.10008.5.1.4.1.1.2 is not a dermoscopic"):
        load_image(ct)
    good = write_dicom(tmp_path / "g.dcm", np.zeros((32, 32, 3))).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(good[: len(good) - 500])
    with pytest.raises(DataError, match="cut.dcm") as e:
        load_image(tmp_path / "cut.dcm")
    assert e.value.code in ("corrupt", "invalid")
    with pytest.raises(DataError, match="accepted format"):  # the viewer takes JPEG and PNG only
        load_image(good, formats=UPLOAD_FORMATS)
    thin = write_dicom(tmp_path / "thin.dcm", np.zeros((4, 200, 3)))
    with pytest.raises(DataError, match="outside the accepted sides"):
        load_image(thin)


def test_index_skip_bad_skips_a_ct_dicom_among_the_archive(served, tmp_path):
    """Audit failure 10: `index --skip-bad` stopped on a CT DICOM although its own message suggests --skip-bad."""
    from typer.testing import CliRunner

    from chaiderm.cli import app

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        write_dicom(tmp_path / "images" / f"c{i}.dcm", rng.integers(0, 255, (72, 72, 3)), PatientID=f"P{i}")
    write_dicom(tmp_path / "images" / "ct.dcm", np.zeros((72, 72, 3)), sop=CTImageStorage)
    (tmp_path / "labels.csv").write_text("image_id,diagnosis\nc0,mel\nc1,nv\nc2,mel\nc3,nv\nct,nv\n")
    args = ["index", "--model", str(served / "run"), "--data", str(tmp_path), "--out", str(tmp_path / "ix")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "ct.dcm" in r.output and "--skip-bad" in r.output, r.output
    r = CliRunner().invoke(app, [*args, "--skip-bad"])
    assert r.exit_code == 0 and "ct.dcm" in r.output, r.output
    from chaiderm.index.archive import ArchiveIndex

    assert sorted(ArchiveIndex.load(tmp_path / "ix").image_ids) == ["c0", "c1", "c2", "c3"]
