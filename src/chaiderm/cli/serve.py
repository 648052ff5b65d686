"""`chaiderm serve`: the evidence viewer, and the checks that keep it off the open network by mistake."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import SERVER_DB, _errors, _fail, _warn, console


def serve(
    model: Annotated[Path, typer.Option(help="trained run folder")],
    index: Annotated[Path, typer.Option(help="index folder")],
    db: Annotated[Path, typer.Option(help="SQLite file for queries, feedback, sessions and the audit log")] = SERVER_DB,
    host: Annotated[str, typer.Option(help="bind address (loopback unless told otherwise)")] = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: int = 20,
    users: Annotated[
        Path | None, typer.Option(help="users file (`chaiderm users add`): sign-in required on every route")
    ] = None,
    keep_queries: Annotated[
        float | None, typer.Option(help="erase query images after this many days (0: never store them)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="inferences at once (default: the CPU cores, at most 4)")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve https directly")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    behind_https_proxy: Annotated[
        bool,
        typer.Option(
            help="a TLS-terminating proxy on this machine forwards to us: secure cookies; the client address is "
            "the last X-Forwarded-For value on connections from loopback, audited as 'CLIENT via 127.0.0.1' "
            "(any local process can set it)"
        ),
    ] = False,
    access_log: Annotated[Path | None, typer.Option(help="append one JSON line per request to this file")] = None,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            help="a PACS's DICOMweb root: signed-in users open its studies by UID and query their dermoscopic "
            "images; experts and admins store results back into a study (audited)"
        ),
    ] = None,
) -> None:
    """Serve the evidence viewer (query page + JSON API) and record users' similarity judgements."""
    import uvicorn

    from chaiderm.pipeline import query_cost_warning
    from chaiderm.web.app import create_app

    _check_limits(max_upload_mb, workers, port, keep_queries)
    _check_tls_options(ssl_certfile, ssl_keyfile)  # before the model loads: uvicorn would raise only after
    _check_exposure(host, users, behind_https_proxy)
    with _errors():
        application = create_app(
            model,
            index,
            db,
            max_upload=max_upload_mb * 1_000_000,
            users=users,
            keep_queries_days=keep_queries,
            workers=workers,
            secure_cookies=ssl_certfile is not None or behind_https_proxy,
            behind_proxy=behind_https_proxy,
            dicomweb=dicomweb,
        )
    if access_log is not None:
        _log_access_to(access_log)
    sock = _bind(host, port)  # before announcing the address: a port in use is one readable line
    port = sock.getsockname()[1]  # the port really listened on (--port 0 picks a free one)
    scheme = "https" if ssl_certfile else "http"
    who = f"sign-in from {users}" if users else "no sign-in (loopback, one local user)"
    console.print(
        f"a query with its evidence took {application.state.query_ms:.0f} ms here "
        "(median of the warm-up queries, on one request's threads)"
    )
    advice = query_cost_warning(application.state.query_ms, application.state.viewer.predictor.model, model)
    if advice:
        _warn(advice)
    console.print(f"evidence viewer on {scheme}://{host}:{port}/ ({who}; data in {db}); Ctrl-C stops it")
    config = uvicorn.Config(
        application,
        log_level="warning",
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        proxy_headers=False,  # the app reads them itself (web.access.Forwarded), keeping the peer beside them
    )
    uvicorn.Server(config).run(sockets=[sock])


def _check_limits(max_upload_mb: int, workers: int | None, port: int, keep_queries: float | None) -> None:
    if not 1 <= max_upload_mb <= 200:
        raise _fail(f"--max-upload-mb must be between 1 and 200, not {max_upload_mb}")
    if workers is not None and not 1 <= workers <= 16:
        raise _fail(f"--workers must be between 1 and 16, not {workers}")
    if not 0 <= port <= 65535:
        raise _fail(f"--port must be between 1 and 65535 (0: any free port), not {port}")
    if keep_queries is not None and (not math.isfinite(keep_queries) or keep_queries < 0):
        raise _fail(f"--keep-queries must be 0 (keep no query images) or more days, not {keep_queries:g}")


def _check_tls_options(ssl_certfile: Path | None, ssl_keyfile: Path | None) -> None:
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise _fail("--ssl-certfile and --ssl-keyfile go together")
    for f in (ssl_certfile, ssl_keyfile):
        if f is not None and not f.is_file():
            raise _fail(f"{f}: file not found")
    if ssl_certfile is not None and ssl_keyfile is not None:
        _check_tls(ssl_certfile, ssl_keyfile)


def _check_exposure(host: str, users: Path | None, behind_https_proxy: bool) -> None:
    """Off loopback only with sign-in; behind a proxy only on loopback."""
    if users is None and not _is_loopback(host):
        raise _fail(
            f"--host {host} would let anyone who reaches this port see every archive and query image and write "
            "feedback: sign-in is required off loopback. Create users with `chaiderm users add NAME --role admin "
            "--users users.json`, then add `--users users.json` (and TLS: --ssl-certfile/--ssl-keyfile, or "
            "--behind-https-proxy)"
        )
    if behind_https_proxy and not _is_loopback(host):
        raise _fail("--behind-https-proxy: bind to loopback (--host 127.0.0.1) and let the proxy reach the world")


def _log_access_to(access_log: Path) -> None:
    """One JSON line per request appended to ``access_log``, and not to the console."""
    import logging

    try:
        handler = logging.FileHandler(access_log)
    except OSError as e:
        raise _fail(f"{access_log}: cannot write the access log ({e.strerror})") from None
    logger = logging.getLogger("chaiderm.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _check_tls(certfile: Path, keyfile: Path) -> None:
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certfile), str(keyfile))
    except ssl.SSLError as e:
        raise _fail(
            f"{certfile} / {keyfile}: not a matching PEM certificate and private key ({e.reason or e}); "
            "--ssl-certfile takes the certificate, --ssl-keyfile its key"
        ) from None
    except OSError as e:
        raise _fail(f"{e.filename or certfile}: cannot read ({e.strerror or e})") from None


def _is_loopback(host: str) -> bool:
    import ipaddress
    import socket

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(i[4][0]).is_loopback for i in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def _bind(host: str, port: int):
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise _fail(f"--host '{host}' is not an address of this machine ({e})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family in (socket.AF_INET, socket.AF_INET6):
        # accepted connections inherit it: without it a keep-alive client waits ~40 ms (Nagle against
        # delayed ACKs) on every response after its first, which uvicorn's own sockets avoid
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise _fail(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
