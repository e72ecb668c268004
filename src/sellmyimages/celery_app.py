"""The Celery application behind SMI_TASK_BACKEND=celery.

Tasks stay plain Django tasks (`django.tasks.task`): django-tasks-celery
registers each one with this app under its import path when its module is
imported, so web processes enqueue through Django's API and `smi worker`
runs them with Celery. Celery reads the CELERY_* names in Django's settings.
"""

import importlib

from celery import Celery

app = Celery("sellmyimages")
app.config_from_object("django.conf:settings", namespace="CELERY")


def import_task_modules():
    """Import every app's tasks module, so a worker knows all the tasks.

    Call it after django.setup(); `smi worker` does.
    """
    from django.apps import apps

    for config in apps.get_app_configs():
        if not config.name.startswith("sellmyimages."):
            continue
        module = f"{config.name}.tasks"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
