"""The `smi` command with the local engine slowed by SMI_TEST_UPSCALE_DELAY seconds.

The crash tests start workers through this module so that a SIGKILL often
lands while an upscale is running. The engine still does the real work
after the delay.
"""

import os
import time

from sellmyimages.upscaling.backends import local
from sellmyimages.cli import main

real_upscale = local.LocalUpscaler.upscale


def slowed_upscale(self, job, destination):
    time.sleep(float(os.environ.get("SMI_TEST_UPSCALE_DELAY", "0")))
    return real_upscale(self, job, destination)


local.LocalUpscaler.upscale = slowed_upscale

if __name__ == "__main__":
    main()
