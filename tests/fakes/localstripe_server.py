"""Run localstripe's application on 127.0.0.1 only, keeping its data in memory.

The `localstripe` command listens on every interface and saves its data to
/tmp/localstripe.pickle after every write, a file concurrent test runs
would share. This runs the same aiohttp application on loopback instead.

Usage: python tests/fakes/localstripe_server.py PORT
"""

import sys

from aiohttp import web
from localstripe import resources
from localstripe.server import app


def main():
    port = int(sys.argv[1])
    resources.Store.dump_to_disk = lambda self: None
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
