"""A PACS as a source of archive cases and queries, and as the place results go back to (DICOMweb).

``client``: one DICOMweb session with time limits (QIDO-RS search, WADO-RS retrieval, STOW-RS storage);
``select``: which instances are dermoscopic photographs, the rest skipped and counted;
``fetch``: instances into archive files with their labels; ``results``: the SR and the evidence capture
written back for each answered image.
"""
