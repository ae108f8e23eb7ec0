"""Schemathesis against ``/openapi.json`` of a real server, once per role: no 5xx, every status code, content type
and body as documented, invalid input rejected with a 4xx.  Bounded (a few examples per operation and mode) so the
whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api import create_api_app
from testkit.api import ServerThread, build_runtime, config_for_tests, inject

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
TOKENS = {
    "viewer": "demo-viewer-token",
    "operator": "demo-operator-token",
    "admin": "demo-admin-token",
    "grid-scoped": "demo-g01-token",
}
MAX_EXAMPLES = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    runtime = build_runtime(config_for_tests(EXAMPLE, workdir))
    # Something to find: alerts in two grids (ids 1..), so generated small ids hit real ones sometimes.
    for device in ("yg01-sd-01a", "hp02-sd-01a", "xh01-sd-01a"):
        inject(runtime, device, {"alarm": True, "obscuration": 5.0})
    with ServerThread(lambda: create_api_app(runtime)) as srv:
        yield srv
    runtime.store.close()


@pytest.fixture(scope="module")
def schema(server: ServerThread) -> Any:
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # The live stream never ends by design: it has its own tests (test_api_stream.py).
    return loaded.exclude(path="/api/v1/stream")


def test_schema_is_openapi_3_1_generated_from_models(server: ServerThread) -> None:
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    ops = {(path, method) for path, item in document["paths"].items() for method in item}
    for expected in [
        ("/api/v1/alerts", "get"),
        ("/api/v1/alerts/{id}", "get"),
        ("/api/v1/alerts/{id}/ack", "post"),
        ("/api/v1/alerts/{id}/dispatch", "post"),
        ("/api/v1/alerts/{id}/resolve", "post"),
        ("/api/v1/incidents", "get"),
        ("/api/v1/buildings", "get"),
        ("/api/v1/buildings/{id}", "get"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{id}", "get"),
        ("/api/v1/rejections", "get"),
        ("/api/v1/stream", "get"),
        ("/api/v1/maintenance", "post"),
        ("/api/v1/maintenance", "get"),
        ("/api/v1/maintenance/{id}", "delete"),
    ]:
        assert expected in ops, expected
    # Generated, not hand-kept: the schema of a response is the pydantic model's own JSON schema.
    from gateway.api.models import ResolveRequest

    resolve = document["components"]["schemas"]["ResolveRequest"]
    assert resolve["properties"]["cause"] == ResolveRequest.model_json_schema()["properties"]["cause"] or (
        resolve["properties"]["cause"]["$ref"].endswith("/Cause")
    )
    assert document["components"]["schemas"]["Cause"]["enum"] == [
        "real_fire",
        "false_alarm",
        "test",
        "device_fault",
        "other",
    ]
    docs = requests.get(f"{server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "/api/v1/alerts/{id}/resolve" in docs.text
    assert "<script src=" not in docs.text and "http" not in docs.text.split("<body>")[0].replace("http-equiv", "")


def _run(schema: Any, server: ServerThread, token: str, mode: GenerationMode) -> list[str]:
    failures: list[str] = []
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=server.url, session=session, headers=headers, checks=checks)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


@pytest.mark.parametrize("role", list(TOKENS))
def test_schemathesis_per_role(schema: Any, server: ServerThread, role: str) -> None:
    failures = _run(schema, server, TOKENS[role], GenerationMode.POSITIVE)
    failures += _run(schema, server, TOKENS[role], GenerationMode.NEGATIVE)
    assert not failures, "\n\n".join(failures)


def test_without_a_token_everything_is_401(schema: Any, server: ServerThread) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        path = operation.path.replace("{id}", "1")
        response = requests.request(operation.method.upper(), server.url + path, json={}, timeout=10)
        assert response.status_code == 401, (operation.label, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")
