"""A real PACS for the tests and the benchmark: Orthanc with its DICOMweb plugin, on loopback ports chosen
free, with a temporary configuration and storage, stopped after; and the DICOM instances put into it
(synthetic dermoscopy as Dermoscopic Photography / VL Photographic instances, a CT, a text report).

Skips where Orthanc or its plugin is missing, except under CHAIDERM_REQUIRE_PACS=1 (set by .ci/run), where
that is a failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DermoscopicPhotographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

# Debian's places; CHAIDERM_ORTHANC / CHAIDERM_ORTHANC_DICOMWEB name others (an Orthanc built elsewhere)
ORTHANC = os.environ.get("CHAIDERM_ORTHANC") or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = Path(os.environ.get("CHAIDERM_ORTHANC_DICOMWEB") or "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REQUIRED = os.environ.get("CHAIDERM_REQUIRE_PACS") == "1"
START_S = 30.0
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
PATIENT = ("Doe^Jane", "PAT-0001")  # what must never reach a log, an audit row or a report


def missing() -> str | None:
    """Why no Orthanc can run here, or None."""
    import importlib.util

    for module in ("dicomweb_client", "highdicom"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[pacs]')"
    if not os.access(ORTHANC, os.X_OK):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not PLUGIN.is_file():
        return f"Orthanc's DICOMweb plugin is not installed ({PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    root: str  # http://127.0.0.1:PORT
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def rest(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.root}{path}", timeout=10) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def running_orthanc(home: Path) -> Iterator[Orthanc]:
    """Orthanc serving ``home``'s storage on a free loopback port, until the block ends."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "chaiderm-test",
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "StableAge": 1,
        "HttpTimeout": 30,
    }
    cfg = home / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = home / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=home)
    server = Orthanc(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({proc.returncode}): {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                server.rest("/system")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer within {START_S:g} s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _base(sop: str, study: str, series: str, modality: str, number: int = 1) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC-1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1 if modality == "XC" else 2, number
    ds.Manufacturer = "chaiderm tests"
    return ds


def photograph(
    pixels: np.ndarray,
    study: str,
    series: str,
    *,
    sop: str = DermoscopicPhotographyImageStorage,
    number: int = 1,
    **tags,
) -> Dataset:
    """An RGB photograph as a dermoscopic (default) or VL photographic instance."""
    ds = _base(sop, study, series, "XC", number)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def ct_slice(study: str) -> Dataset:
    """A CT slice in the same study: a dermoscopy tool must pass over it."""
    ds = _base(CTImageStorage, study, generate_uid(), "CT")
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((16, 16), np.uint16).tobytes()
    return ds


def text_report(study: str) -> Dataset:
    """A Basic Text SR: an object without pixels in the same study."""
    ds = _base(BASIC_TEXT_SR, study, generate_uid(), "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    return ds


def store(server: Orthanc, datasets: list[Dataset]) -> None:
    from dicomweb_client.api import DICOMwebClient

    for ds in datasets:  # Part-10 files, as a modality sends them (dicomweb-client alone writes none)
        ds.preamble = b"\0" * 128
    DICOMwebClient(server.dicomweb, timeout=30).store_instances(datasets)
