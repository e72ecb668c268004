"""Running the WSGI application under gunicorn from inside `smi serve`."""

from gunicorn.app.base import BaseApplication


class ShopServer(BaseApplication):
    def __init__(self, application, options):
        self.application = application
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.application


def access_log_config():
    """Return gunicorn's logging config, which replaces Django's at start-up.

    It keeps Django's format for the root logger, and every handler runs
    the redact filter.
    """
    from django.conf import settings

    keyvalue = settings.LOGGING["formatters"]["keyvalue"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "sellmyimages.logredact.RedactSecretsFilter"}},
        "formatters": {"plain": {"format": "%(asctime)s %(message)s"}, "keyvalue": keyvalue},
        "handlers": {
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stdout",
            },
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "keyvalue",
                "filters": ["redact"],
            },
            "error": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"handlers": ["console"], "level": settings.LOGGING["root"]["level"]},
        "loggers": {
            "gunicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "gunicorn.error": {"handlers": ["error"], "level": "INFO", "propagate": False},
        },
    }


def run_gunicorn(*, host, port, workers):
    from sellmyimages.wsgi import application

    options = {
        "bind": f"{host}:{port}",
        # The control socket defaults to one path per user, which several
        # shops on one machine would fight over; nothing here uses it.
        "control_socket_disable": True,
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        # Downloads of large outputs stream for a long time on slow links.
        "timeout": 300,
        "graceful_timeout": 30,
        "accesslog": "-",
        # %(U)s is the path without the query string; download tokens and
        # webhook secrets in paths are removed by the redact filter below.
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss',
        "logconfig_dict": access_log_config(),
    }
    ShopServer(application, options).run()
