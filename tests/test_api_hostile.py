"""Hostile requests against a real server: whatever arrives, the answer is a 4xx problem document, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api import create_api_app
from testkit.api import ServerThread, build_runtime, config_for_tests, inject

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
OPERATOR = {"Authorization": "Bearer demo-operator-token"}
PATHS = [
    "/api/v1/alerts",
    "/api/v1/alerts/1",
    "/api/v1/alerts/1/ack",
    "/api/v1/alerts/1/dispatch",
    "/api/v1/alerts/1/resolve",
    "/api/v1/incidents",
    "/api/v1/buildings",
    "/api/v1/buildings/yg01",
    "/api/v1/devices",
    "/api/v1/devices/yg01-sd-01a",
    "/api/v1/rejections",
    "/api/v1/maintenance",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    runtime = build_runtime(config_for_tests(EXAMPLE, tmp_path_factory.mktemp("hostile")))
    inject(runtime, "yg01-sd-01a", {"alarm": True})
    with ServerThread(lambda: create_api_app(runtime)) as srv:
        yield srv
    runtime.store.close()


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(PATHS),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    query=st.dictionaries(text, text, max_size=4),
    body=junk_json,
    raw=st.binary(max_size=2000),
    use_raw=st.booleans(),
    suffix=text,
)
def test_no_request_produces_a_5xx(
    server: ServerThread,
    path: str,
    method: str,
    query: dict[str, str],
    body: object,
    raw: bytes,
    use_raw: bool,
    suffix: str,
) -> None:
    url = server.url + path + (quote(suffix, safe="") if suffix and path.endswith("1") else "")
    kwargs: dict[str, object] = {"params": query, "headers": OPERATOR, "timeout": 10}
    if method != "GET":
        kwargs["data" if use_raw else "json"] = raw if use_raw else body
        if use_raw:
            kwargs["headers"] = {**OPERATOR, "Content-Type": "application/json"}
    response = requests.request(method, url, **kwargs)  # type: ignore[arg-type]
    assert response.status_code < 500, (method, url, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["Content-Type"].startswith("application/problem+json"), response.text[:200]
        assert response.json()["status"] == response.status_code


def test_odd_paths_and_headers(server: ServerThread) -> None:
    for path in [
        "/api/v1/alerts/%00",
        "/api/v1/alerts/" + "9" * 400,
        "/api/v1/alerts/-1",
        "/api/v1/buildings/%E4%B8%AD",
        "/api/v1/devices/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/devices/a'%20OR%20'1'='1",
        "/static/../gateway/config.py",
        "/api/v1/alerts?limit=99999999999999999999999",
        "/api/v1/alerts?since=-1",
        "/api/v1/alerts?since=9999-99-99",
    ]:
        response = requests.get(server.url + path, headers=OPERATOR, timeout=10)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:300])
    for header in ["Bearer", "Bearer ", "bearer demo-operator-token-x", "Bearer \t", "x" * 7000]:
        response = requests.get(server.url + "/api/v1/alerts", headers={"Authorization": header}, timeout=10)
        assert response.status_code == 401, (header[:40], response.status_code)
    # a lower-case scheme is still the right scheme
    assert requests.get(server.url + "/api/v1/alerts", headers={"Authorization": "bearer demo-operator-token"}).ok
