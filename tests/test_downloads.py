"""The download link: expiry, unknown tokens, byte ranges and counting."""

from datetime import timedelta

import pytest
from django.utils import timezone

from sellmyimages.jobs.manager import job_manager
from tests.factories import force_status, make_job

pytestmark = pytest.mark.django_db

CONTENT = bytes(range(256)) * 40  # 10,240 bytes with a recognisable pattern


@pytest.fixture
def token(catalog, settings):
    job = make_job(catalog("photo_cat_chelsea_451x300.png"))
    output = settings.SMI_OUTPUT_DIR
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{job.job_id}.png"
    path.write_bytes(CONTENT)
    force_status(job, "pending", "processing")
    job_manager.update_status(
        job.job_id,
        "completed",
        output_path=str(path),
        output_size=len(CONTENT),
        output_format="png",
    )
    return job_manager.generate_download_token(job.job_id)


def download_count(token):
    return job_manager.find_by_download_token(token).download_count


def test_whole_file(client, token):
    response = client.get(f"/downloads/{token}")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == CONTENT
    assert response["Content-Length"] == str(len(CONTENT))
    assert response["Accept-Ranges"] == "bytes"
    assert download_count(token) == 1


def test_range_resume_not_counted(client, token):
    response = client.get(f"/downloads/{token}", HTTP_RANGE="bytes=1000-1999")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 1000-1999/{len(CONTENT)}"
    assert response["Content-Length"] == "1000"
    assert b"".join(response.streaming_content) == CONTENT[1000:2000]
    assert download_count(token) == 0


def test_range_of_whole_file_counted(client, token):
    response = client.get(f"/downloads/{token}", HTTP_RANGE="bytes=0-")
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == CONTENT
    assert download_count(token) == 1


def test_probe_from_zero_not_counted(client, token):
    for _ in range(5):
        response = client.get(f"/downloads/{token}", HTTP_RANGE="bytes=0-0")
        assert response.status_code == 206
        assert b"".join(response.streaming_content) == CONTENT[:1]
    assert download_count(token) == 0


@pytest.mark.parametrize(
    "header", ["bytes=" + "1" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=5-2", "bytes=-0-"]
)
def test_absurd_range_sends_whole_file(client, token, header):
    response = client.get(f"/downloads/{token}", HTTP_RANGE=header)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == CONTENT


def test_open_ended_and_suffix_ranges(client, token):
    response = client.get(f"/downloads/{token}", HTTP_RANGE="bytes=10000-")
    assert b"".join(response.streaming_content) == CONTENT[10000:]
    response = client.get(f"/downloads/{token}", HTTP_RANGE="bytes=-240")
    assert b"".join(response.streaming_content) == CONTENT[-240:]


def test_unsatisfiable_range(client, token):
    response = client.get(f"/downloads/{token}", HTTP_RANGE="bytes=999999-")
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(CONTENT)}"


def test_head_does_not_count(client, token):
    response = client.head(f"/downloads/{token}")
    assert response.status_code == 200
    assert download_count(token) == 0


def test_expired_token_gets_410(client, token):
    job = job_manager.find_by_download_token(token)
    job_manager.update_job(job.job_id, download_expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get(f"/downloads/{token}")
    assert response.status_code == 410
    assert b"expired" in response.content


@pytest.mark.parametrize("bad", ["0" * 64, "short", "z" * 64, "A" * 65])
def test_unknown_token_gets_404(client, token, bad):
    response = client.get(f"/downloads/{bad}")
    assert response.status_code == 404
    assert b"not valid" in response.content


def test_replaced_token_stops_working(client, token):
    job = job_manager.find_by_download_token(token)
    newer = job_manager.generate_download_token(job.job_id)
    assert client.get(f"/downloads/{token}").status_code == 404
    assert client.get(f"/downloads/{newer}").status_code == 200


def test_missing_file_gets_410(client, token):
    job = job_manager.find_by_download_token(token)
    import os

    os.unlink(job.output_path)
    assert client.get(f"/downloads/{token}").status_code == 410
