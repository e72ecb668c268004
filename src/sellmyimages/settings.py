"""Django settings for Sell My Images, read from the environment.

Everything the service keeps (database file, originals, outputs, outbox)
lives under SMI_DATA_DIR so that one folder is the whole state of an
embedded installation.
"""

import os
import secrets
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from sellmyimages.envconfig import (
    env_bool,
    env_decimal,
    env_int,
    env_list,
    load_or_create_secret_key,
)

DATA_DIR = Path(os.environ.get("SMI_DATA_DIR", "data")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("SMI_SECRET_KEY") or load_or_create_secret_key(
    DATA_DIR / "secret_key", secrets.token_urlsafe
)
DEBUG = env_bool("SMI_DEBUG", False)
ALLOWED_HOSTS = env_list("SMI_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("SMI_CSRF_TRUSTED_ORIGINS", [])

# The public base URL is used to build links in emails and callback URLs
# for providers; requests alone cannot tell it behind a proxy.
PUBLIC_BASE_URL = os.environ.get("SMI_PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip(
    "/"
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "sellmyimages.jobs",
    "sellmyimages.catalog",
    "sellmyimages.payments",
    "sellmyimages.upscaling",
    "sellmyimages.delivery",
    "sellmyimages.notifications",
    "sellmyimages.storefront",
    "sellmyimages.shopsettings",
    "sellmyimages.analytics",
    "sellmyimages.observability",
    "sellmyimages.hooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sellmyimages.urls"
WSGI_APPLICATION = "sellmyimages.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "sellmyimages.storefront.context.shop",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'smi.sqlite3'}",
        conn_max_age=int(os.environ.get("SMI_DB_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the worker writes; IMMEDIATE
    # transactions take the write lock up front so that two writers queue on
    # the busy timeout instead of failing with "database is locked" midway.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKS = {
    "default": {
        "BACKEND": os.environ.get(
            "SMI_TASK_BACKEND", "django_tasks_db.DatabaseBackend"
        ),
        "QUEUES": [],
    }
}

# Task queue and scheduled maintenance (docs/operations.md shows the three
# shapes). SMI_TASK_BACKEND is "database" (django-tasks-db, the default),
# "celery" (Celery with a Redis broker, through django-tasks-celery) or a
# backend's import path.
TASK_BACKEND_ALIASES = {
    "database": "django_tasks_db.DatabaseBackend",
    "celery": "django_tasks_celery.CeleryBackend",
}
TASKS["default"]["BACKEND"] = TASK_BACKEND_ALIASES.get(
    TASKS["default"]["BACKEND"], TASKS["default"]["BACKEND"]
)
SMI_REDIS_URL = os.environ.get("SMI_REDIS_URL", "redis://127.0.0.1:6379/0")
# Every Redis key the shop writes starts with this, so several shops or
# test runs can share one Redis server.
SMI_REDIS_KEY_PREFIX = os.environ.get("SMI_REDIS_KEY_PREFIX", "smi:")
if TASKS["default"]["BACKEND"] == TASK_BACKEND_ALIASES["celery"]:
    TASKS["default"]["OPTIONS"] = {"CELERY_APP": "sellmyimages.celery_app.app"}
    # The job rows are the source of truth, so Celery keeps no task results
    # and django-tasks-celery's checks for a result backend do not apply.
    SILENCED_SYSTEM_CHECKS = ["django_tasks_celery.W001", "django_tasks_celery.W002"]
CELERY_BROKER_URL = SMI_REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "global_keyprefix": SMI_REDIS_KEY_PREFIX,
    # A task whose worker died unacknowledged is delivered again after this
    # many seconds; it must exceed the longest task plus its retry delay.
    "visibility_timeout": env_int("SMI_CELERY_VISIBILITY_TIMEOUT", 3600),
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = "UTC"

# A worker running a local upscale renews its hold on the job every third
# of this; once the hold lapses, the recovery sweep hands the job to
# another worker.
SMI_PROCESSING_LEASE_SECONDS = env_int("SMI_PROCESSING_LEASE_SECONDS", 300)
# A step that should have run this long ago (a task lost with its worker or
# its queue) is enqueued again by the recovery sweep.
SMI_RECOVER_AFTER_SECONDS = env_int("SMI_RECOVER_AFTER_SECONDS", 600)
# A job whose upscale lost its worker this many times fails as worker_lost,
# so an image that crashes every worker cannot loop for ever.
SMI_MAX_PROCESSING_RECOVERIES = env_int("SMI_MAX_PROCESSING_RECOVERIES", 5)
# File retention after a job fails or is abandoned, in hours.
SMI_FAILED_RETENTION_HOURS = env_int("SMI_FAILED_RETENTION_HOURS", 7 * 24)
SMI_ABANDONED_RETENTION_HOURS = env_int("SMI_ABANDONED_RETENTION_HOURS", 24)
SMI_TMP_RETENTION_HOURS = env_int("SMI_TMP_RETENTION_HOURS", 24)
# Seconds between runs of each sweep under `smi scheduler`.
SMI_SWEEP_INTERVALS = {
    "abandon": env_int("SMI_SWEEP_ABANDON_SECONDS", 300),
    "recover": env_int("SMI_SWEEP_RECOVER_SECONDS", 60),
    "poll": env_int("SMI_SWEEP_POLL_SECONDS", 60),
    "remind": env_int("SMI_SWEEP_REMIND_SECONDS", 600),
    "cleanup": env_int("SMI_SWEEP_CLEANUP_SECONDS", 3600),
}
# Rows each sweep handles per run; the rest wait for the next run.
SMI_SWEEP_BATCH = env_int("SMI_SWEEP_BATCH", 500)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True

# Email: the embedded default writes each message as an .eml file into the
# outbox folder; set SMI_EMAIL_BACKEND=smtp and the SMI_SMTP_* variables for
# real delivery.
SMI_OUTBOX_DIR = Path(os.environ.get("SMI_OUTBOX_DIR", DATA_DIR / "outbox"))
if os.environ.get("SMI_EMAIL_BACKEND", "outbox") == "smtp":
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": os.environ.get("SMI_SMTP_HOST", "localhost"),
                "port": env_int("SMI_SMTP_PORT", 587),
                "username": os.environ.get("SMI_SMTP_USER", ""),
                "password": os.environ.get("SMI_SMTP_PASSWORD", ""),
                "use_tls": env_bool("SMI_SMTP_STARTTLS", True),
                "timeout": 30,
            },
        }
    }
else:
    MAILERS = {"default": {"BACKEND": "sellmyimages.notifications.outbox.EmailBackend"}}
DEFAULT_FROM_EMAIL = os.environ.get("SMI_FROM_EMAIL", "Sell My Images <shop@localhost>")
SMI_ADMIN_EMAIL = os.environ.get("SMI_ADMIN_EMAIL", "admin@localhost")

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# Shop settings. Money is Decimal in the shop currency's major unit.
SMI_SHOP_NAME = os.environ.get("SMI_SHOP_NAME", "Sell My Images")
SMI_CURRENCY = os.environ.get("SMI_CURRENCY", "usd").lower()
SMI_MARKUP_PERCENT = env_decimal("SMI_MARKUP_PERCENT", Decimal("500"))
SMI_MIN_PRICE = env_decimal("SMI_MIN_PRICE", Decimal("0.50"))
SMI_COST_PER_CREDIT = env_decimal("SMI_COST_PER_CREDIT", Decimal("0.04"))
SMI_CREDITS_PER_MEGAPIXEL = env_decimal("SMI_CREDITS_PER_MEGAPIXEL", Decimal("0.25"))
SMI_RESOLUTIONS = env_list("SMI_RESOLUTIONS", ["4x", "8x"])
SMI_MIN_SOURCE_SIDE = env_int("SMI_MIN_SOURCE_SIDE", 100)
# Largest source image accepted, in pixels: above it the file is treated as
# a decompression bomb and rejected before decoding.
SMI_MAX_SOURCE_PIXELS = env_int("SMI_MAX_SOURCE_PIXELS", 50_000_000)
SMI_MAX_SOURCE_BYTES = env_int("SMI_MAX_SOURCE_BYTES", 50 * 1024 * 1024)

# Upscaling engines in order of preference, and the largest output each
# may produce, in megapixels. A resolution whose output would exceed the
# first engine's limit is not offered.
SMI_UPSCALERS = env_list("SMI_UPSCALERS", ["local"])
SMI_ENGINE_MAX_MEGAPIXELS = {
    "local": env_int("SMI_LOCAL_MAX_MEGAPIXELS", 1000),
    "upsampler": env_int("SMI_UPSAMPLER_MAX_MEGAPIXELS", 400),
}

# Stripe takes real payments once STRIPE_SECRET_KEY is set; without it the
# shop runs on the local test checkout.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "").strip()
SMI_PAYMENT_PROVIDER = os.environ.get(
    "SMI_PAYMENT_PROVIDER", "stripe" if STRIPE_SECRET_KEY else "local"
)
# The local checkout moves no money; it exists only while test mode is on.
SMI_TEST_MODE = env_bool("SMI_TEST_MODE", True)

SMI_DOWNLOAD_EXPIRY_HOURS = env_int("SMI_DOWNLOAD_EXPIRY_HOURS", 24)
SMI_ABANDON_AFTER_HOURS = env_int("SMI_ABANDON_AFTER_HOURS", 24)

# Stripe payments (payments/backends/stripe.py). The charge currency is
# SMI_CURRENCY; empty success and cancel URLs mean the shop's own pages.
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "").strip()
# Tests point the client at a fake Stripe on loopback.
SMI_STRIPE_API_BASE = os.environ.get(
    "SMI_STRIPE_API_BASE", "https://api.stripe.com"
).rstrip("/")
SMI_STRIPE_SUCCESS_URL = os.environ.get("SMI_STRIPE_SUCCESS_URL", "")
SMI_STRIPE_CANCEL_URL = os.environ.get("SMI_STRIPE_CANCEL_URL", "")
SMI_STRIPE_MAX_NETWORK_RETRIES = env_int("SMI_STRIPE_MAX_NETWORK_RETRIES", 2)
SMI_STRIPE_TIMEOUT_SECONDS = env_int("SMI_STRIPE_TIMEOUT_SECONDS", 30)
# A refund that fails transiently is retried this many times in all, the
# delay growing fourfold from SMI_REFUND_RETRY_SECONDS up to the lease. The
# lease is how long an attempt may run before another worker takes it over,
# so it must exceed the Stripe client's timeout times its network retries.
SMI_REFUND_MAX_ATTEMPTS = env_int("SMI_REFUND_MAX_ATTEMPTS", 6)
SMI_REFUND_RETRY_SECONDS = env_int("SMI_REFUND_RETRY_SECONDS", 60)
SMI_REFUND_LEASE_SECONDS = env_int("SMI_REFUND_LEASE_SECONDS", 1800)
if SMI_PAYMENT_PROVIDER == "stripe":
    if not STRIPE_SECRET_KEY:
        raise ImproperlyConfigured(
            "SMI_PAYMENT_PROVIDER='stripe' needs STRIPE_SECRET_KEY (sk_test_... or sk_live_...)."
        )
    # Prices are converted to Stripe's integer amounts at 100 minor units per
    # unit (jobs.pricing.to_minor_units). Stripe counts these currencies in
    # whole units or in thousandths, so they would be charged wrongly.
    # NOTE: the list follows Stripe's currency documentation as remembered
    # when this was written; check a rare currency there before using it.
    if SMI_CURRENCY in {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf",
        "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
        "bhd", "jod", "kwd", "omr", "tnd",
    }:  # fmt: skip
        raise ImproperlyConfigured(
            f"SMI_CURRENCY={SMI_CURRENCY!r} does not have two decimal places, which "
            "Stripe payments here require; use a currency such as 'usd' or 'eur'."
        )

SMI_CATALOG_DIR = Path(os.environ.get("SMI_CATALOG_DIR", DATA_DIR / "catalog"))
SMI_UPLOADS_DIR = DATA_DIR / "sources"
SMI_OUTPUT_DIR = DATA_DIR / "outputs"
SMI_TMP_DIR = DATA_DIR / "tmp"

# Remote image URLs are accepted only from these hosts.
SMI_ALLOWED_IMAGE_HOSTS = env_list("SMI_ALLOWED_IMAGE_HOSTS", [])
# Private addresses that outbound fetches may reach anyway (a fake provider
# on loopback in tests, an image server on the private network).
SMI_FETCH_ALLOWED_ADDRESSES = env_list("SMI_FETCH_ALLOWED_ADDRESSES", [])

# Remote upscaling providers (upscaling/backends/upsampler.py and
# replicate.py; the job flow is in upscaling/remote.py). List them in
# SMI_UPSCALERS, e.g. "upsampler,local": a provider whose circuit is open
# is skipped.
# upscaling.backends.check_configuration() raises ImproperlyConfigured at
# startup when a listed provider lacks one of these.
UPSAMPLER_API_KEY = os.environ.get("UPSAMPLER_API_KEY", "").strip()
UPSAMPLER_API_BASE = os.environ.get(
    "UPSAMPLER_API_BASE", "https://upsampler.com/api/v1"
).rstrip("/")
# realism, anime or universal.
UPSAMPLER_INPUT_IMAGE_TYPE = os.environ.get("UPSAMPLER_INPUT_IMAGE_TYPE", "universal")
# globalCreativity and detail, 0 to 10; an empty value leaves the field out.
UPSAMPLER_CREATIVITY = os.environ.get("UPSAMPLER_CREATIVITY", "7")
UPSAMPLER_DETAIL = os.environ.get("UPSAMPLER_DETAIL", "8")
# Callbacks are confirmed with GET /status/{id}. If that endpoint cannot be
# used, turn this off and list the hosts of Upsampler's result URLs in
# UPSAMPLER_RESULT_HOSTS; results are then fetched only from those hosts.
UPSAMPLER_CONFIRM_WITH_STATUS_API = env_bool("UPSAMPLER_CONFIRM_WITH_STATUS_API", True)
UPSAMPLER_RESULT_HOSTS = env_list("UPSAMPLER_RESULT_HOSTS", [])

REPLICATE_API_TOKEN = os.environ.get("REPLICATE_API_TOKEN", "").strip()
REPLICATE_API_BASE = os.environ.get(
    "REPLICATE_API_BASE", "https://api.replicate.com"
).rstrip("/")
# The model's latest version is used unless REPLICATE_VERSION names one.
REPLICATE_MODEL = os.environ.get("REPLICATE_MODEL", "nightmareai/real-esrgan")
REPLICATE_VERSION = os.environ.get("REPLICATE_VERSION", "").strip()
REPLICATE_FACE_ENHANCE = env_bool("REPLICATE_FACE_ENHANCE", False)
# The account's webhook signing secret (whsec_...).
REPLICATE_WEBHOOK_SECRET = os.environ.get("REPLICATE_WEBHOOK_SECRET", "").strip()
# Hosts that Replicate's output URLs may use; empty allows any public host.
REPLICATE_RESULT_HOSTS = env_list("REPLICATE_RESULT_HOSTS", [])
# NOTE: Replicate documents no input size limit for Real-ESRGAN; large
# inputs can run out of GPU memory. This default is a guess.
SMI_ENGINE_MAX_MEGAPIXELS["replicate"] = env_int("SMI_REPLICATE_MAX_MEGAPIXELS", 64)

# Timeout of one provider API request, in seconds.
SMI_PROVIDER_TIMEOUT_SECONDS = env_decimal("SMI_PROVIDER_TIMEOUT_SECONDS", Decimal("30"))
# Submissions per job before a transient error fails it (and refunds it).
SMI_PROVIDER_MAX_ATTEMPTS = env_int("SMI_PROVIDER_MAX_ATTEMPTS", 5)
# Retry delays double from the base up to the maximum, with +-50% jitter;
# a longer Retry-After from the provider wins.
SMI_PROVIDER_RETRY_BASE_SECONDS = env_decimal("SMI_PROVIDER_RETRY_BASE_SECONDS", Decimal("10"))
SMI_PROVIDER_RETRY_MAX_SECONDS = env_decimal("SMI_PROVIDER_RETRY_MAX_SECONDS", Decimal("300"))
# A job with no result this long after processing started is failed.
SMI_PROVIDER_MAX_PROCESSING_MINUTES = env_decimal(
    "SMI_PROVIDER_MAX_PROCESSING_MINUTES", Decimal("15")
)
# Status polls, in case a callback never comes: the interval doubles from
# the initial value up to the maximum.
SMI_PROVIDER_POLL_INITIAL_SECONDS = env_decimal(
    "SMI_PROVIDER_POLL_INITIAL_SECONDS", Decimal("30")
)
SMI_PROVIDER_POLL_MAX_SECONDS = env_decimal("SMI_PROVIDER_POLL_MAX_SECONDS", Decimal("120"))
# Transient failures in a row, across jobs, that open a provider's circuit,
# and how long new jobs then go to the next engine in SMI_UPSCALERS.
SMI_CIRCUIT_FAILURE_THRESHOLD = env_int("SMI_CIRCUIT_FAILURE_THRESHOLD", 3)
SMI_CIRCUIT_COOLDOWN_SECONDS = env_int("SMI_CIRCUIT_COOLDOWN_SECONDS", 300)
# How long a provider may use the signed URL of a job's source image.
SMI_SOURCE_URL_MAX_AGE_SECONDS = env_int("SMI_SOURCE_URL_MAX_AGE_SECONDS", 1800)
# Limits for downloading a provider's result file. A result is also limited
# to 8 bytes per expected output pixel.
SMI_RESULT_MAX_BYTES = env_int("SMI_RESULT_MAX_BYTES", 2 * 1024**3)
SMI_RESULT_FETCH_TIMEOUT_SECONDS = env_decimal(
    "SMI_RESULT_FETCH_TIMEOUT_SECONDS", Decimal("300")
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "keyvalue": {"format": "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"}
    },
    "filters": {"redact": {"()": "sellmyimages.logredact.RedactSecretsFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "keyvalue",
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("SMI_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.tasks": {"level": "WARNING"},
        "django_tasks_db": {"level": "WARNING"},
        "pyvips": {"level": "WARNING"},
    },
}

# Operating the shop (shopsettings app, jobs admin, `smi jobs`). The shop
# owner can override the next two settings in the admin, as well as
# SMI_MARKUP_PERCENT, SMI_DOWNLOAD_EXPIRY_HOURS, SMI_ABANDON_AFTER_HOURS,
# SMI_FAILED_RETENTION_HOURS, SMI_ABANDONED_RETENTION_HOURS and
# SMI_RESOLUTIONS, so code reads them through sellmyimages.shopsettings.get().
# Hours before a download link expires that the reminder email is due.
SMI_REMINDER_HOURS = env_int("SMI_REMINDER_HOURS", 6)
# The grace period after a download link expires: the file is kept and the
# customer can ask for a new link.
SMI_OUTPUT_RETENTION_HOURS = env_int("SMI_OUTPUT_RETENTION_HOURS", 3 * 24)
# How often a customer may ask for a new download link, per job and 24 hours.
SMI_NEW_LINK_REQUESTS_PER_DAY = env_int("SMI_NEW_LINK_REQUESTS_PER_DAY", 3)
# A pending or processing job unchanged for this long counts as stuck, and
# an operator may retry it.
SMI_STUCK_AFTER_MINUTES = env_int("SMI_STUCK_AFTER_MINUTES", 30)
# How long each process reuses the shop settings it read from the database.
SMI_SHOP_SETTINGS_CACHE_SECONDS = env_int("SMI_SHOP_SETTINGS_CACHE_SECONDS", 5)

# Observability and outgoing webhooks (logformat.py, observability app,
# hooks app). SMI_LOG_FORMAT picks key=value lines or one JSON object per
# line; every handler keeps the redact filter.
SMI_LOG_FORMAT = os.environ.get("SMI_LOG_FORMAT", "keyvalue").strip().lower()
if SMI_LOG_FORMAT not in ("keyvalue", "json"):
    raise ImproperlyConfigured(
        f"SMI_LOG_FORMAT={SMI_LOG_FORMAT!r} is not a log format; use keyvalue or json."
    )
LOGGING["formatters"] = {
    "keyvalue": {"()": "sellmyimages.logformat.KeyValueFormatter"},
    "json": {"()": "sellmyimages.logformat.JsonFormatter"},
}
for _handler in LOGGING["handlers"].values():
    _handler["formatter"] = SMI_LOG_FORMAT
    if "redact" not in _handler.setdefault("filters", []):
        _handler["filters"].append("redact")
del _handler
# Every process writes its metric values here, and /metrics adds them up
# (prometheus-client's multiprocess mode; `smi serve` empties it on start).
SMI_METRICS_DIR = Path(
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") or DATA_DIR / "metrics"
).resolve()
# /metrics is served to direct loopback requests and to any request that
# carries "Authorization: Bearer <SMI_METRICS_TOKEN>".
SMI_METRICS_TOKEN = os.environ.get("SMI_METRICS_TOKEN", "")
SMI_METRICS_ALLOW_LOOPBACK = env_bool("SMI_METRICS_ALLOW_LOOPBACK", True)
# Outgoing webhooks: attempts per delivery, the first retry delay (doubled
# each attempt, capped, then scaled by a random 0.5 to 1.5) and the time
# budget of one POST, all in seconds.
SMI_WEBHOOK_MAX_ATTEMPTS = env_int("SMI_WEBHOOK_MAX_ATTEMPTS", 8)
SMI_WEBHOOK_RETRY_BASE_SECONDS = env_int("SMI_WEBHOOK_RETRY_BASE_SECONDS", 30)
SMI_WEBHOOK_RETRY_MAX_SECONDS = env_int("SMI_WEBHOOK_RETRY_MAX_SECONDS", 3600)
SMI_WEBHOOK_TIMEOUT_SECONDS = env_int("SMI_WEBHOOK_TIMEOUT_SECONDS", 10)
