"""One DICOMweb session with a PACS (``dicomweb-client``): QIDO-RS to find instances, WADO-RS to retrieve
them, STOW-RS to store results. Every request has a time limit, and whatever goes wrong on the wire (a PACS
that is down, slow, refuses or answers garbage) is one :class:`PacsError` line naming the PACS and what was
asked: never a traceback, never a patient's name (messages name studies and instances by UID only)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from chaiderm.errors import ChaidermError, DataError
from chaiderm.pacs.select import InstanceRef, Selection, select_images

# seconds to connect, and to wait for each read of an answer: a PACS silent for longer is given up on
CONNECT_S, READ_S = 5.0, 30.0
# instances one command may list (a study, series or QIDO query); more is a query to narrow, not to run
MAX_INSTANCES = 10_000
# QIDO-RS fields asked beyond the defaults: the image size, checked before any pixel is retrieved
FIELDS = ("SOPClassUID", "Rows", "Columns", "NumberOfFrames")


class PacsError(ChaidermError):
    """The PACS could not be reached, did not answer in time, or refused: nothing was changed here."""


def require_extra() -> None:
    """A one-line refusal where the ``pacs`` extra (dicomweb-client, highdicom) is not installed."""
    import importlib.util

    for module in ("dicomweb_client", "highdicom"):
        if importlib.util.find_spec(module) is None:
            raise DataError("--dicomweb", f"needs {module}: pip install -e '.[pacs]'", code="missing")


def display_url(url: str) -> str:
    """The URL as messages and the audit show it: no user name, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


def check_url(url: str) -> str:
    """``url`` without a trailing slash, or a :class:`DataError` for one that is not http(s)://host/..."""
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError("--dicomweb", f"'{display_url(url)}' is not a DICOMweb URL (http(s)://host[:port]/path)")
    return url.strip().rstrip("/")


class Pacs:
    """A DICOMweb service root (e.g. Orthanc's ``http://host:8042/dicom-web``)."""

    def __init__(self, url: str, *, connect_s: float | None = None, read_s: float | None = None):
        require_extra()
        from dicomweb_client.api import DICOMwebClient

        self.url = check_url(url)
        self.name = display_url(self.url)
        self.timeout = (CONNECT_S if connect_s is None else connect_s, READ_S if read_s is None else read_s)
        # dicomweb-client logs each request's URL and failures at INFO/ERROR; the errors are ours to say
        logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)
        self.client = DICOMwebClient(self.url, timeout=self.timeout)
        # its default retries every failed request (a refused connection and a timeout included) up to five
        # times with exponential waits: 30 s before a PACS that is down is said to be down (measured), and five
        # read limits before a silent one is. One attempt: the limit is what it says
        self.client.set_http_retry_params(retry=False)

    @contextlib.contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        import requests

        try:
            yield
        except requests.Timeout:
            raise PacsError(
                f"{self.name}: the PACS did not answer {what} within {self.timeout[1]:g} s; nothing was changed"
            ) from None
        except requests.ConnectionError as e:
            reason = _reason(e)
            raise PacsError(f"{self.name}: cannot reach the PACS ({reason}) for {what}; nothing was changed") from None
        except requests.HTTPError as e:
            code = e.response.status_code if e.response is not None else "?"
            raise PacsError(f"{self.name}: the PACS answered HTTP {code} to {what}; nothing was changed") from None
        except requests.RequestException as e:
            raise PacsError(f"{self.name}: {what} failed ({type(e).__name__}); nothing was changed") from None

    def find(
        self,
        *,
        studies: Sequence[str] = (),
        series: Sequence[str] = (),
        filters: dict[str, str] | None = None,
    ) -> Selection:
        """The instances of the studies, the series and the QIDO-RS query named, split by :func:`select_images`.
        An instance whose header gives it more frames or pixels than ``data.images`` accepts is kept here
        and refused by name when its pixels are read (``fetch``)."""
        found: list[dict] = []
        asks = [({"study_instance_uid": s}, f"study {s}") for s in studies]
        asks += [({"search_filters": {"SeriesInstanceUID": s}}, f"series {s}") for s in series]
        if filters:
            asks.append(
                ({"search_filters": dict(filters)}, "the query " + "&".join(f"{k}={v}" for k, v in filters.items()))
            )
        for kw, what in asks:
            with self._asking(f"the search for {what}"):
                got = self.client.search_for_instances(fields=list(FIELDS), limit=MAX_INSTANCES + 1, **kw)
            if not isinstance(got, list):
                raise PacsError(f"{self.name}: the search for {what} did not answer a list of instances")
            if len(got) > MAX_INSTANCES:
                raise PacsError(
                    f"{self.name}: {what} has over {MAX_INSTANCES:,} instances; name studies or series instead"
                )
            found += got
        return select_images(found)

    def fetch(self, ref: InstanceRef) -> bytes:
        """The instance as a DICOM Part-10 file (WADO-RS); a malformed one is a :class:`DataError` naming it."""
        from pydicom import dcmwrite
        from pydicom.errors import InvalidDicomError

        _check_header(ref)
        with self._asking(f"the retrieval of {ref.name}"):
            try:
                ds = self.client.retrieve_instance(ref.study, ref.series, ref.instance)
            except InvalidDicomError:
                raise DataError(
                    ref.name,
                    "not a DICOM Part-10 file (no preamble and DICM prefix) as the PACS serves it",
                    code="corrupt",
                ) from None
            except (ValueError, KeyError, EOFError, OSError, TypeError, AttributeError) as e:
                raise DataError(
                    ref.name, f"malformed DICOM from the PACS ({type(e).__name__})", code="corrupt"
                ) from None
        buf = io.BytesIO()
        try:
            dcmwrite(buf, ds, enforce_file_format=True)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            raise DataError(ref.name, f"malformed DICOM from the PACS ({e})", code="corrupt") from None
        return buf.getvalue()

    def store(self, datasets: Sequence, study: str) -> int:
        """Store ``datasets`` into ``study`` in one STOW-RS request; the number stored. A PACS that refuses any
        of them is a :class:`PacsError` saying how many."""
        if not datasets:
            return 0
        for ds in datasets:
            # dicomweb-client writes each dataset as pydicom does by default, without the 128-byte preamble
            # and "DICM" of a Part-10 file; a PACS that keeps what it is sent (Orthanc) would then serve
            # files that no strict reader, dicomweb-client's own included, accepts back
            ds.preamble = b"\0" * 128
        with self._asking(f"storing {len(datasets)} result(s) in study {study}"):
            answer = self.client.store_instances(list(datasets), study_instance_uid=study)
        failed = len(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            raise PacsError(
                f"{self.name}: the PACS refused {failed} of the {len(datasets)} result(s) for study {study}"
            )
        return len(datasets)


def _reason(e: Exception) -> str:
    """The innermost cause of a connection error in a few words ('Connection refused'), not urllib3's repr."""
    inner: BaseException | None = e
    while inner is not None and (inner.__cause__ or inner.__context__) is not None:
        inner = inner.__cause__ or inner.__context__
    text = str(getattr(inner, "strerror", None) or inner or e)
    return text.split("] ")[-1][:120] if text else type(e).__name__


def _check_header(ref: InstanceRef) -> None:
    """Refuse, before retrieving a byte of it, an instance the search says is too large or multi-frame."""
    from chaiderm.data.images import MAX_PIXELS, MAX_SIDE

    if ref.frames > 1:
        raise DataError(ref.name, f"{ref.frames} frames: one photograph per instance is expected", code="invalid")
    if ref.rows * ref.columns > MAX_PIXELS or max(ref.rows, ref.columns) > MAX_SIDE:
        raise DataError(
            ref.name, f"image is {ref.columns}x{ref.rows}, over the accepted size; refused unread", code="too_large"
        )
