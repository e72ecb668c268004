import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(
    os.environ.get("SMI_TESTDATA_DIR", REPO.parent / "shared" / "testdata" / "images")
)


def image_file(name):
    path = TESTDATA / name
    if not path.is_file():
        pytest.fail(f"Test image {name!r} not found in {TESTDATA}; set SMI_TESTDATA_DIR.")
    return path


@pytest.fixture(autouse=True)
def data_dir(request, tmp_path_factory):
    """Give every test its own data folder, so files never leak between tests.

    It is not inside tmp_path, which stays empty for the test's own use.
    """
    if not request.config.pluginmanager.hasplugin("django"):
        return None
    settings = request.getfixturevalue("settings")
    root = tmp_path_factory.mktemp("data")
    settings.DATA_DIR = root
    settings.SMI_CATALOG_DIR = root / "catalog"
    settings.SMI_UPLOADS_DIR = root / "sources"
    settings.SMI_OUTPUT_DIR = root / "outputs"
    settings.SMI_TMP_DIR = root / "tmp"
    settings.SMI_OUTBOX_DIR = root / "outbox"
    settings.SMI_CATALOG_DIR.mkdir(parents=True)
    # Django's test setup swaps every mailer for the in-memory one; the
    # tests read the .eml files the real outbox backend writes instead.
    settings.MAILERS = {"default": {"BACKEND": "sellmyimages.notifications.outbox.EmailBackend"}}
    return settings.DATA_DIR


DATABASE_FIXTURES = {
    "db",
    "transactional_db",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
}


@pytest.fixture(autouse=True)
def shop_settings_cache(request):
    """Start every test with an empty shop settings cache.

    A test without database access has no stored shop settings, so it sees
    the environment's values without a query.
    """
    if not request.config.pluginmanager.hasplugin("django"):
        yield
        return
    from sellmyimages.shopsettings import config

    has_database = request.node.get_closest_marker("django_db") is not None or bool(
        DATABASE_FIXTURES & set(request.fixturenames)
    )
    config.clear_cache()
    if has_database:
        yield
        config.clear_cache()
    else:
        with config.environment_only():
            yield


@pytest.fixture
def catalog(settings):
    """Copy test images into the catalog folder; return a function that adds one."""

    def add(name, as_name=None):
        destination = Path(settings.SMI_CATALOG_DIR) / (as_name or name)
        shutil.copyfile(image_file(name), destination)
        return destination.name

    return add


def run_tasks():
    """Run every ready task in this process, as a worker would."""
    from sellmyimages.demo import run_worker_until_idle

    run_worker_until_idle(worker_id="pytest")


def files_in(folder):
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def image_server(settings):
    """Serve the test images over HTTP on 127.0.0.2, an allowed image host.

    Only 127.0.0.2 is allowed past the fetcher's private-address guard, so
    a redirect to 127.0.0.1 is still refused as it would be in production.
    """
    import functools
    import http.server
    import threading

    handler = functools.partial(QuietHandler, directory=str(TESTDATA))
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.SMI_ALLOWED_IMAGE_HOSTS = ["127.0.0.2"]
    settings.SMI_FETCH_ALLOWED_ADDRESSES = ["127.0.0.2"]
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


try:
    import http.server as _http_server

    class QuietHandler(_http_server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/redirect-to-loopback"):
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:9/secret")
                self.end_headers()
                return
            super().do_GET()
finally:
    del _http_server
