"""Bad input gets a clear error naming the problem and leaves nothing behind."""

import os
import subprocess
import sys

import pytest
from django_tasks_db.models import DBTaskResult

from sellmyimages.jobs.models import Job
from tests.conftest import REPO, files_in, image_file

pytestmark = pytest.mark.django_db

BAD_IMAGES = [
    ("not_an_image_word_document.jpg", "not_an_image"),
    ("svg_vector_diagram_1000x400.svg", "svg_not_supported"),
    ("photo_grace_hopper_tiny_64x64.gif", "too_small"),
    ("png_16bit_grayscale_gradient_32x32.png", "too_small"),
    ("jpeg_truncated_progressive_100x100.jpg", "corrupt_image"),
    ("bomb_gif_declares_4_gigapixels.gif", "decompression_bomb"),
    ("bomb_png_ztxt_chunk_decompression_dos.png", "corrupt_image"),
    ("jpeg_12bit_monkey_149x227.jpg", "not_an_image"),
]


def assert_nothing_left(settings, catalog_files):
    assert Job.objects.count() == 0
    assert DBTaskResult.objects.count() == 0
    leftovers = [
        path
        for path in files_in(settings.DATA_DIR)
        if path not in catalog_files and "catalog" not in path.parts
    ]
    assert leftovers == []


def post(client, path, body):
    return client.post(path, body, content_type="application/json")


@pytest.mark.parametrize("name,code", BAD_IMAGES)
def test_bad_catalog_image_rejected(client, catalog, settings, name, code):
    catalog(name)
    catalog_files = files_in(settings.SMI_CATALOG_DIR)
    for path, body in (
        ("/api/v1/quotes", {"catalog_image": name}),
        ("/api/v1/jobs", {"catalog_image": name, "resolution": "4x"}),
    ):
        response = post(client, path, body)
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == code
        assert error["message"]
    assert_nothing_left(settings, catalog_files)


@pytest.mark.parametrize("name,code", BAD_IMAGES)
def test_bad_remote_image_rejected(client, image_server, settings, name, code):
    response = post(
        client,
        "/api/v1/jobs",
        {"image_url": f"{image_server}/{name}", "resolution": "4x"},
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code
    assert_nothing_left(settings, [])


def test_remote_image_bought(client, image_server, settings):
    response = post(
        client,
        "/api/v1/jobs",
        {"image_url": f"{image_server}/photo_cat_chelsea_451x300.png", "resolution": "8x"},
    )
    assert response.status_code == 201, response.content
    job = Job.objects.get()
    assert (job.source_width, job.source_height) == (451, 300)
    assert os.path.isfile(job.source_path)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.2/x.png", "javascript:alert(1)", "//127.0.0.2/x.png"],
)
def test_non_http_url_rejected(client, image_server, settings, url):
    response = post(client, "/api/v1/jobs", {"image_url": url, "resolution": "4x"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_url"
    assert_nothing_left(settings, [])


def test_host_not_allowed(client, settings):
    settings.SMI_ALLOWED_IMAGE_HOSTS = ["images.example.com"]
    response = post(
        client, "/api/v1/quotes", {"image_url": "http://169.254.169.254/latest/meta-data"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "host_not_allowed"


def test_redirect_to_private_address_rejected(client, image_server, settings):
    response = post(
        client, "/api/v1/quotes", {"image_url": f"{image_server}/redirect-to-loopback"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "fetch_failed"
    assert_nothing_left(settings, [])


@pytest.mark.parametrize("resolution", ["3x", "16x", "", "4X", "banana"])
def test_unsupported_resolution(client, catalog, settings, resolution):
    name = catalog("photo_cat_chelsea_451x300.png")
    response = post(client, "/api/v1/jobs", {"catalog_image": name, "resolution": resolution})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "resolution"
    assert "4x, 8x" in error["message"]
    assert_nothing_left(settings, files_in(settings.SMI_CATALOG_DIR))


@pytest.mark.parametrize("address", ["not-an-email", "a@", "@b.com", "a b@c.com", "x" * 300])
def test_malformed_email(client, catalog, settings, address):
    name = catalog("photo_cat_chelsea_451x300.png")
    response = post(
        client,
        "/api/v1/jobs",
        {"catalog_image": name, "resolution": "4x", "email": address},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "email"
    assert address not in error["message"]
    assert_nothing_left(settings, files_in(settings.SMI_CATALOG_DIR))


def test_missing_and_double_image_reference(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    for body in (
        {"resolution": "4x"},
        {"resolution": "4x", "catalog_image": name, "image_url": "http://127.0.0.2/x.png"},
    ):
        response = post(client, "/api/v1/jobs", body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_image_reference"


@pytest.mark.parametrize("name", ["../settings.py", "nope.png", ".hidden.png", "a/b.png"])
def test_unknown_catalog_name(client, catalog, name):
    response = post(client, "/api/v1/quotes", {"catalog_image": name})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "catalog_image_not_found"


def test_malformed_json_body(client):
    response = client.post("/api/v1/jobs", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize("name", ["not_an_image_word_document.jpg", "svg_vector_diagram_1000x400.svg"])
def test_cli_bad_image_exits_2(tmp_path, name):
    env = {**os.environ, "SMI_DATA_DIR": str(tmp_path / "cli-data")}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "sellmyimages.cli", "demo", str(image_file(name))],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert not (tmp_path / "cli-data" / "catalog").exists()


def test_cli_bad_resolution_exits_2(tmp_path):
    env = {**os.environ, "SMI_DATA_DIR": str(tmp_path / "cli-data")}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "sellmyimages.cli", "demo", "--resolution", "5x"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert "resolution" in result.stderr


@pytest.mark.parametrize("name", ["a\x00b.png", "a" * 5000 + ".png"])
def test_impossible_catalog_name(client, name):
    response = post(client, "/api/v1/quotes", {"catalog_image": name})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "catalog_image_not_found"
    assert len(response.json()["error"]["message"]) < 200


@pytest.mark.parametrize(
    "name", ["svg_vector_diagram_1000x400.svg", "bomb_gif_declares_4_gigapixels.gif"]
)
def test_thumbnail_of_bad_file_is_404(client, catalog, name):
    catalog(name)
    assert client.get(f"/images/{name}/thumbnail.jpg").status_code == 404
    assert client.get("/images/a%00b.png/thumbnail.jpg").status_code == 404


def test_overlong_email(client, catalog, settings):
    name = catalog("photo_cat_chelsea_451x300.png")
    address = "a" * 300 + "@example.com"
    response = post(
        client, "/api/v1/jobs", {"catalog_image": name, "resolution": "4x", "email": address}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "email"
    assert_nothing_left(settings, files_in(settings.SMI_CATALOG_DIR))
