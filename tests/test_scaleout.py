"""The many-machine shape: Celery workers on Redis, schedulers sharing PostgreSQL.

Web servers, workers and schedulers here are separate processes that
share only PostgreSQL (the test database) and Redis, as they would on
separate machines. Payments are made in a child process too, so that
their tasks go through the Celery backend the workers read.
"""

import time
import uuid

import httpx
import pytest
import redis

from sellmyimages.jobs.models import Job, JobEvent
from tests.processes import (
    PrivateRedis,
    ShopProcesses,
    free_port,
    seeded_random,
    shop_environment,
    wait_for,
)
from tests.test_crash_safety import (
    FAST_MAINTENANCE,
    assert_batch_settled_once,
    batch_settled,
    create_batch,
    test_database_url,  # noqa: F401 (a fixture)
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.crash,
]

# The shared Redis server's database for these tests; a unique key prefix
# per test keeps runs apart and lets the test delete its keys afterwards.
TEST_REDIS_DB = 5


def celery_environment(settings, database_url, redis_url, prefix):
    return shop_environment(
        settings,
        database_url,
        SMI_TASK_BACKEND="celery",
        SMI_REDIS_URL=redis_url,
        SMI_REDIS_KEY_PREFIX=prefix,
        # A task whose worker died comes back after 10 s, besides the
        # recovery sweep's own requeue.
        SMI_CELERY_VISIBILITY_TIMEOUT=10,
        **FAST_MAINTENANCE,
    )


@pytest.fixture
def redis_prefix():
    prefix = f"smi-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis(db=TEST_REDIS_DB)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@pytest.fixture
def celery_shop(settings, tmp_path, test_database_url, redis_prefix):
    env = celery_environment(
        settings, test_database_url, f"redis://127.0.0.1:6379/{TEST_REDIS_DB}", redis_prefix
    )
    processes = ShopProcesses(env, tmp_path / "logs")
    try:
        yield processes
    finally:
        processes.stop_all()


def start_celery_workers(shop, count):
    names = [f"worker{index}" for index in range(count)]
    for name in names:
        shop.start(name, "worker", "--concurrency", "1", module="tests.slowed_smi")
    return names


def pay_in_child(shop):
    shop.start("pay", "pay_unpaid", module="tests.crash_orders")
    assert shop.processes["pay"][0].wait(timeout=120) == 0, shop.logs()


def log_lines(shop, name, text):
    path = shop.log_dir / f"{name}.log"
    if not path.exists():
        return 0
    return path.read_text(errors="replace").count(text)


def test_celery_workers_lose_no_job(celery_shop, catalog, settings):
    shop = celery_shop
    rng = seeded_random()
    batch = create_batch(catalog, good=8, broken=2, unpaid=2)
    workers = start_celery_workers(shop, 3)
    # Two schedulers, as on two machines: one leads, one waits.
    shop.start("scheduler_a", "scheduler", "--standby-interval", "0.5")
    shop.start("scheduler_b", "scheduler", "--standby-interval", "0.5")
    pay_in_child(shop)

    wait_for(
        lambda: Job.objects.filter(status="processing").exclude(lease_owner="").exists(),
        90,
        "no upscale started within 90 s",
    )
    for name in workers:
        shop.kill(name)
        shop.restart(name)
    for _ in range(8):
        time.sleep(rng.uniform(0.5, 2.0))
        shop.kill_random(workers, rng)

    try:
        wait_for(lambda: batch_settled(batch), 150, "the batch did not settle in 150 s")
    except AssertionError:
        print(shop.logs())
        raise
    assert_batch_settled_once(batch, settings)
    assert JobEvent.objects.filter(event="processing_recovered").exists()
    leaders = [
        name
        for name in ("scheduler_a", "scheduler_b")
        if log_lines(shop, name, "event=scheduler_lock_acquired")
    ]
    assert len(leaders) == 1


def test_standby_scheduler_takes_over(celery_shop, catalog, settings):
    shop = celery_shop
    shop.start("scheduler_a", "scheduler", "--standby-interval", "0.5")
    wait_for(
        lambda: log_lines(shop, "scheduler_a", "event=scheduler_lock_acquired"),
        60,
        "the first scheduler did not take the lock within 60 s",
    )
    shop.start("scheduler_b", "scheduler", "--standby-interval", "0.5")
    time.sleep(3)
    assert log_lines(shop, "scheduler_b", "event=scheduler_lock_acquired") == 0

    shop.kill("scheduler_a")

    wait_for(
        lambda: log_lines(shop, "scheduler_b", "event=scheduler_lock_acquired"),
        30,
        "the standby scheduler did not take over within 30 s",
    )
    # The new leader runs the sweeps: an unpaid job past its timeout goes.
    batch = create_batch(catalog, good=0, broken=0, unpaid=1)
    wait_for(
        lambda: Job.objects.filter(pk=batch["unpaid"][0].pk, status="abandoned").exists(),
        30,
        "the new leader did not abandon the unpaid job within 30 s",
    )


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_celery_survives_redis_restart(private_redis, catalog, settings, tmp_path, test_database_url):
    env = celery_environment(settings, test_database_url, private_redis.url(), "smi-restart:")
    shop = ShopProcesses(env, tmp_path / "logs")
    try:
        batch = create_batch(catalog, good=6, broken=1, unpaid=0)
        start_celery_workers(shop, 2)
        shop.start("scheduler", "scheduler", "--standby-interval", "0.5")
        pay_in_child(shop)

        for _ in range(2):
            time.sleep(2)
            # Without persistence, every queued task is lost with the server.
            private_redis.stop()
            time.sleep(2)
            private_redis.start()

        try:
            wait_for(lambda: batch_settled(batch), 150, "the batch did not settle in 150 s")
        except AssertionError:
            print(shop.logs())
            raise
        assert_batch_settled_once(batch, settings)
        for name in ("worker0", "worker1", "scheduler"):
            assert shop.processes[name][0].poll() is None, f"{name} exited"
    finally:
        shop.stop_all()


def test_web_server_reports_queue_readiness(private_redis, settings, tmp_path, test_database_url):
    env = celery_environment(settings, test_database_url, private_redis.url(), "smi-web:")
    shop = ShopProcesses(env, tmp_path / "logs")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        shop.start("web", "serve", "--port", str(port), "--workers", "0", "--no-scheduler")

        def ready():
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "smi serve did not become ready within 60 s")
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}

        private_redis.stop()
        response = httpx.get(f"{base}/readyz", timeout=10)

        assert response.status_code == 503
        assert response.json()["queue"] == "ConnectionError"
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        shop.stop_all()
