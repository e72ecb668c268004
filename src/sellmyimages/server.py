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


def run_gunicorn(*, host, port, workers):
    from sellmyimages.wsgi import application

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        # Downloads of large outputs stream for a long time on slow links.
        "timeout": 300,
        "graceful_timeout": 30,
        "accesslog": "-",
        # The download token is part of the path, so the access log shows
        # only the method, the status and the size.
        "access_log_format": '%(h)s "%(m)s" %(s)s %(B)s %(L)ss',
    }
    ShopServer(application, options).run()
