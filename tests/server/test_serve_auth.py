"""A server with an API key: every endpoint but /healthz and the dashboard files answers 401
{"error": ...} without the key or with a wrong one, and works with either header form."""

from __future__ import annotations

import httpx
import pytest
from conftest import API_KEY, unique_name

ENDPOINTS = [
    ("GET", "/collections", None),
    ("PUT", "/collections/{name}", {"dim": 4}),
    ("GET", "/collections/{name}", None),
    ("PUT", "/collections/{name}/points", {"ids": [1], "vectors": [[1, 0, 0, 0]]}),
    ("POST", "/collections/{name}/points/get", {"ids": [1]}),
    ("POST", "/collections/{name}/search", {"vectors": [[1, 0, 0, 0]], "k": 1}),
    ("POST", "/collections/{name}/points/delete", {"ids": [1]}),
    ("GET", "/metrics", None),
    ("GET", "/stats", None),
    ("DELETE", "/collections/{name}", None),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": f"Basic {API_KEY}"}, {"Authorization": f"Bearer {API_KEY}x"}])  # fmt: skip
def test_without_the_key_every_endpoint_answers_401(auth_server, headers):
    name = unique_name("auth")
    with httpx.Client(base_url=auth_server.url, timeout=30) as http:
        for method, path, body in ENDPOINTS:
            r = http.request(method, path.format(name=name), json=body, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code)
            assert "API key" in r.json()["error"] and r.headers.get("www-authenticate") == "Bearer"
        ok = http.get("/collections", headers={"Authorization": f"Bearer {API_KEY}"}).json()["collections"]
        assert name not in [c["name"] for c in ok]  # nothing was created


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {API_KEY}"}, {"authorization": f"bearer {API_KEY}"}, {"api-key": API_KEY}])
def test_with_the_key_every_endpoint_works(auth_server, headers):
    name = unique_name("auth")
    with httpx.Client(base_url=auth_server.url, timeout=30, headers=headers) as http:
        for method, path, body in ENDPOINTS:
            r = http.request(method, path.format(name=name), json=body)
            assert r.status_code == 200, (method, path, r.status_code, r.text)


def test_healthz_and_the_dashboard_need_no_key(auth_server):
    with httpx.Client(base_url=auth_server.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        page = http.get("/dashboard/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert http.get("/dashboard/../stats").status_code in (401, 404)  # no way around the key
