import logging
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1", "testserver"}


class UpscalingConfig(AppConfig):
    name = "sellmyimages.upscaling"
    label = "upscaling"
    verbose_name = "Upscaling"

    def ready(self):
        from sellmyimages.upscaling.backends import check_configuration

        # A provider listed without its key would fail every paid job, so
        # the process refuses to start instead.
        check_configuration()
        remote = [name for name in settings.SMI_UPSCALERS if name != "local"]
        host = urlsplit(settings.PUBLIC_BASE_URL).hostname or ""
        if remote and host in LOOPBACK_HOSTS:
            logger.warning(
                "event=public_url_not_reachable providers=%s public_base_url=%s "
                "message=%r",
                ",".join(remote),
                settings.PUBLIC_BASE_URL,
                "remote providers cannot fetch sources or call back; set SMI_PUBLIC_BASE_URL",
            )
