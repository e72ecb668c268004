from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "sellmyimages.jobs"
    label = "jobs"
    verbose_name = "Jobs"
