"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis): valid and invalid
requests to every operation, on a server without sign-in (every route reachable) and on one with it
(signed in as an admin, and anonymous). No answer may be a 5xx or break the schema the server
publishes (a refusal included: every route declares its one-line error body)."""

import shutil

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from chaiderm.web import routers
from chaiderm.web.app import create_app
from chaiderm.web.auth import Users

EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance]


def _fuzz(app, headers: dict | None = None) -> dict[str, set[int]]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers or {})
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in GenerationMode:
            seen.setdefault(op.label, set())

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same cases every run: a CI failure reproduces
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                r = case.call_and_validate(headers=headers, checks=CHECKS)
                seen[case.operation.label].add(r.status_code)

            try:
                run()
            except Unsatisfiable:
                # nothing to make invalid (an operation without parameters or body): positive mode covered it
                assert mode is GenerationMode.NEGATIVE, op.label
    return seen


@pytest.fixture
def app_copy(served, tmp_path):
    shutil.copytree(served / "ix", tmp_path / "ix")  # the fuzzer may delete archive cases
    return served / "run", tmp_path / "ix", tmp_path / "fb.db"


def test_fuzz_api_without_sign_in(app_copy):
    app = create_app(*app_copy, max_upload=200_000)
    with TestClient(app):
        seen = _fuzz(app)
    assert len(seen) >= 19  # every operation was fuzzed
    assert all(c < 500 for codes in seen.values() for c in codes)


def test_fuzz_api_signed_in_and_anonymous(app_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(routers.session, "FAILED_DELAY_S", 0.0)
    users = Users(tmp_path / "users.json", create=True)
    users.add("root", "admin", "a long admin password")
    app = create_app(*app_copy, max_upload=200_000, users=tmp_path / "users.json")
    with TestClient(app) as c:
        token = c.post("/api/token", json={"name": "root", "password": "a long admin password"}).json()["token"]
        seen = _fuzz(app, {"Authorization": f"Bearer {token}"})
        assert all(c < 500 for codes in seen.values() for c in codes)
        # anonymous: every operation but the public ones answers 401, whatever is sent
        anonymous = TestClient(app)
        for path, ops in app.openapi()["paths"].items():
            for method in ops:
                if path in ("/healthz", "/login", "/api/session", "/api/token"):
                    continue
                r = anonymous.request(method.upper(), path.replace("{", "x").replace("}", ""))
                assert r.status_code == 401, (method, path, r.status_code)
