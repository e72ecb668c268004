from django.apps import AppConfig


class HooksConfig(AppConfig):
    name = "sellmyimages.hooks"
    label = "hooks"
    verbose_name = "Outgoing webhooks"

    def ready(self):
        # Importing the module connects its signal receivers.
        from sellmyimages.hooks import receivers  # noqa: F401
