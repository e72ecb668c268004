"""No-op task chains: the queue engine's own cost per task, for lifecycle_bench.py."""

import os

import redis
from django.tasks import task

_client = None


def counter():
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["SMI_REDIS_URL"])
    return _client


def finished_key():
    return os.environ["SMI_REDIS_KEY_PREFIX"] + "bench:finished"


@task()
def noop_step(chain, remaining):
    """Enqueue the chain's next step, or count the chain as finished."""
    if remaining > 1:
        noop_step.enqueue(chain, remaining - 1)
    else:
        counter().incr(finished_key())
