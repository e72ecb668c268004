"""Settings for the test run: the real settings with a throwaway data folder."""

import os
import tempfile

os.environ.setdefault("SMI_DATA_DIR", tempfile.mkdtemp(prefix="smi-tests-"))
os.environ.setdefault("SMI_PUBLIC_BASE_URL", "http://testserver")

from sellmyimages.settings import *  # noqa: E402,F403

ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
