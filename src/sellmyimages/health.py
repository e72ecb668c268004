"""Liveness and readiness endpoints for load balancers and supervisors."""

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

# Seconds /readyz waits for Redis before it reports the queue unavailable.
QUEUE_TIMEOUT_SECONDS = 2


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Return 200 when the database and the task queue respond, else 503."""
    body = {"status": "ok", "database": "ok", "queue": "ok"}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database failure means "not ready"
        body["database"] = type(exc).__name__
    try:
        check_queue()
    except Exception as exc:  # any queue failure means "not ready"
        body["queue"] = type(exc).__name__
    if body["database"] != "ok" or body["queue"] != "ok":
        body["status"] = "unavailable"
        return JsonResponse(body, status=503)
    return JsonResponse(body)


def check_queue():
    """Raise if the task backend cannot take tasks."""
    backend = settings.TASKS["default"]["BACKEND"]
    if backend == "django_tasks_celery.CeleryBackend":
        import redis

        client = redis.Redis.from_url(
            settings.SMI_REDIS_URL,
            socket_connect_timeout=QUEUE_TIMEOUT_SECONDS,
            socket_timeout=QUEUE_TIMEOUT_SECONDS,
        )
        try:
            client.ping()
        finally:
            client.close()
    elif backend == "django_tasks_db.DatabaseBackend":
        from django_tasks_db.models import DBTaskResult

        # Reading the task table shows it exists and is migrated.
        list(DBTaskResult.objects.order_by().values_list("id", flat=True)[:1])
