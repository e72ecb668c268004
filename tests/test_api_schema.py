"""The OpenAPI schema describes the endpoints the API serves."""

import pytest

pytestmark = pytest.mark.django_db


def test_openapi_schema_lists_endpoints(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert "post" in paths["/api/v1/quotes"]
    assert "post" in paths["/api/v1/jobs"]
    assert "get" in paths["/api/v1/jobs/{job_id}"]
    created = paths["/api/v1/jobs"]["post"]["responses"]
    assert {"201", "400"} <= set(created)
    job_out = schema["components"]["schemas"]["JobOut"]["properties"]
    assert "email" not in job_out
    assert "download_token_hash" not in job_out


def test_unknown_job_is_404_json(client):
    response = client.get("/api/v1/jobs/7f0c1d0e-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"
    response = client.get("/api/v1/jobs/not-a-uuid")
    assert response.status_code == 404
