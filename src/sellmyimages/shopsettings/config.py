"""Reading and saving the runtime shop settings."""

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from sellmyimages.shopsettings.models import (
    SINGLETON_PK,
    ShopSettings,
    ShopSettingsChange,
    parse_resolutions,
)

logger = logging.getLogger(__name__)

# Each ShopSettings field and the Django setting, read from the
# environment, that applies while the field is blank.
ENVIRONMENT_SETTINGS = {
    "markup_percentage": "SMI_MARKUP_PERCENT",
    "download_expiry_hours": "SMI_DOWNLOAD_EXPIRY_HOURS",
    "reminder_hours": "SMI_REMINDER_HOURS",
    "abandon_after_hours": "SMI_ABANDON_AFTER_HOURS",
    "output_retention_hours": "SMI_OUTPUT_RETENTION_HOURS",
    "failed_retention_hours": "SMI_FAILED_RETENTION_HOURS",
    "abandoned_retention_hours": "SMI_ABANDONED_RETENTION_HOURS",
    "resolutions": "SMI_RESOLUTIONS",
}


@dataclass(frozen=True)
class ShopConfig:
    """The settings in force: each override, or else the environment's value."""

    markup_percentage: Decimal
    download_expiry_hours: int
    reminder_hours: int
    abandon_after_hours: int
    output_retention_hours: int
    failed_retention_hours: int
    abandoned_retention_hours: int
    resolutions: tuple


# (deadline on time.monotonic(), overrides); a deadline of None never expires.
_cache = None


def environment_defaults():
    """Return the value of every field as the environment sets it."""
    values = {
        field: getattr(settings, name) for field, name in ENVIRONMENT_SETTINGS.items()
    }
    values["markup_percentage"] = Decimal(values["markup_percentage"])
    values["resolutions"] = tuple(values["resolutions"])
    return values


def stored_overrides():
    """Read the fields the admin has set; blank fields are left out."""
    row = read_row()
    if row is None:
        return {}
    overrides = {}
    for field in ENVIRONMENT_SETTINGS:
        value = getattr(row, field)
        if value is None or value == "":
            continue
        if field == "resolutions":
            value = tuple(parse_resolutions(value))
        overrides[field] = value
    return overrides


def read_row():
    """Return the settings row, or None if there is none or no table yet."""
    try:
        # The savepoint keeps a failed query from breaking the caller's
        # transaction on PostgreSQL.
        with transaction.atomic():
            return ShopSettings.objects.filter(pk=SINGLETON_PK).first()
    except DatabaseError:
        # Commands such as `smi demo` price an order before they migrate a
        # new database; a missing table contains no overrides.
        if ShopSettings._meta.db_table not in connection.introspection.table_names():
            return None
        raise


def cached_overrides():
    global _cache
    now = time.monotonic()
    cache = _cache
    if cache is not None and (cache[0] is None or now < cache[0]):
        return cache[1]
    overrides = stored_overrides()
    _cache = (now + settings.SMI_SHOP_SETTINGS_CACHE_SECONDS, overrides)
    return overrides


def current():
    """Return the ShopConfig in force, reading the overrides through the cache."""
    values = environment_defaults()
    values.update(cached_overrides())
    return ShopConfig(**values)


def clear_cache():
    """Make the next current() call in this process read the database."""
    global _cache
    _cache = None


@contextmanager
def environment_only():
    """Use the environment's values, without reading the database, until exit.

    For code that has no database, such as unit tests of the pricing.
    """
    global _cache
    _cache = (None, {})
    try:
        yield
    finally:
        _cache = None


def describe(field, stored):
    """Return how a stored field value reads in the audit trail."""
    if stored is None or stored == "":
        default = environment_defaults()[field]
        if field == "resolutions":
            default = ", ".join(default)
        return f"environment default ({default})"
    if isinstance(stored, Decimal):
        # The form's value and the stored one differ in trailing zeros.
        return str(stored.quantize(Decimal("0.01")))
    return str(stored)


def save_settings(row, *, actor):
    """Save the settings row and write one audit row per changed field.

    Returns the names of the fields that changed. The new values apply to
    orders and download links created after the save; existing jobs keep
    the price and expiry they were given.
    """
    with transaction.atomic():
        previous = (
            ShopSettings.objects.select_for_update().filter(pk=SINGLETON_PK).first()
        )
        changed = []
        for field in ENVIRONMENT_SETTINGS:
            old = getattr(previous, field) if previous is not None else None
            new = getattr(row, field)
            if normalize(old) == normalize(new):
                continue
            changed.append(field)
            ShopSettingsChange.objects.create(
                actor=actor[:128],
                field=field,
                old_value=describe(field, old)[:200],
                new_value=describe(field, new)[:200],
            )
        row.save()
    clear_cache()
    if changed:
        logger.info(
            "event=shop_settings_changed actor=%s fields=%s", actor, ",".join(changed)
        )
    return changed


def normalize(value):
    if value == "":
        return None
    if isinstance(value, str):
        return ", ".join(parse_resolutions(value))
    return value
