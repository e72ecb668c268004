"""Webhook secrets and signatures in the Standard Webhooks scheme.

A secret is "whsec_" followed by the base64 of random bytes, and the
signature header is "v1,<base64 of HMAC-SHA256 over id.timestamp.body>"
keyed with the decoded bytes (https://www.standardwebhooks.com/, version 1
of the specification). Receivers can check it with any Standard Webhooks
library.
"""

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def generate_secret():
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret):
    """Return the HMAC key bytes of a whsec_ secret; raise ValueError if invalid."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            "The webhook secret is not valid base64 after whsec_."
        ) from exc
    if not key:
        raise ValueError("The webhook secret is empty.")
    return key


def sign(secret, msg_id, timestamp, body):
    """Return the webhook-signature header value for one message.

    `timestamp` is whole seconds since the Unix epoch, as sent in the
    webhook-timestamp header, and `body` the exact bytes that are sent.
    """
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
