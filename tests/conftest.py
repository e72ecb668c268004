import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(
    os.environ.get("SMI_TESTDATA_DIR", REPO.parent / "shared" / "testdata" / "images")
)


def testdata(name):
    path = TESTDATA / name
    if not path.is_file():
        pytest.fail(f"Test image {name!r} not found in {TESTDATA}; set SMI_TESTDATA_DIR.")
    return path


@pytest.fixture(autouse=True)
def data_dir(request, tmp_path):
    """Give every test its own data folder, so files never leak between tests."""
    if not request.config.pluginmanager.hasplugin("django"):
        return None
    settings = request.getfixturevalue("settings")
    settings.DATA_DIR = tmp_path / "data"
    settings.SMI_CATALOG_DIR = tmp_path / "data" / "catalog"
    settings.SMI_UPLOADS_DIR = tmp_path / "data" / "sources"
    settings.SMI_OUTPUT_DIR = tmp_path / "data" / "outputs"
    settings.SMI_TMP_DIR = tmp_path / "data" / "tmp"
    settings.SMI_OUTBOX_DIR = tmp_path / "data" / "outbox"
    settings.SMI_CATALOG_DIR.mkdir(parents=True)
    return settings.DATA_DIR


@pytest.fixture
def catalog(settings):
    """Copy test images into the catalog folder; return a function that adds one."""

    def add(name, as_name=None):
        destination = Path(settings.SMI_CATALOG_DIR) / (as_name or name)
        shutil.copyfile(testdata(name), destination)
        return destination.name

    return add


def run_tasks():
    """Run every ready task in this process, as a worker would."""
    from django_tasks_db.management.commands.db_worker import Worker

    Worker(
        queue_names=["*"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="pytest",
        excluded_queue_names=[],
    ).run()


def files_in(folder):
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())
