"""Runtime shop settings: the admin's overrides on top of the environment.

Call get() for the values in force. It reads the database at most once
every SMI_SHOP_SETTINGS_CACHE_SECONDS in each process, so a change made in
the admin reaches other processes within that many seconds.
"""


def get():
    """Return the ShopConfig in force now."""
    from sellmyimages.shopsettings.config import current

    return current()
