"""A logging filter that removes secrets a third-party logger might print.

Django logs the path of every 4xx response ("Not Found: /downloads/...")
and our URLs carry secrets in the path, so every handler runs this filter
as a last line of defence; our own log lines never contain them.
"""

import logging
import re

PATTERNS = [
    (re.compile(r"(/downloads/)[^\s/?\"']+"), r"\1[redacted]"),
    (re.compile(r"(/checkout/local/)[^\s/?\"']+"), r"\1[redacted]"),
    (re.compile(r"(/webhooks/[a-z]+/)[^\s/?\"']+"), r"\1[redacted]"),
    (re.compile(r"([?&](?:signature|sig|token|key|expires)=)[^&\s\"']+", re.I), r"\1[redacted]"),
    # Standard Webhooks secrets are base64, so they may contain + / and =.
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_[redacted]"),
    (re.compile(r"\b(sk|rk|whsec|pk)_(live|test)?_?[A-Za-z0-9]{6,}"), r"\1_[redacted]"),
    # Checkout session ids (Stripe's cs_..., the local checkout's lcs_...)
    # open the payment page of a job, so they are treated as secrets.
    (re.compile(r"\b(l?cs)_(live_|test_)?[A-Za-z0-9]{8,}"), r"\1_[redacted]"),
    (re.compile(r"\b(Bearer\s+)[^\s\"',]+", re.I), r"\1[redacted]"),
    (
        re.compile(
            r"\b([\w-]*(?:token|secret|password|api_key|apikey))=(\"[^\"]*\"|'[^']*'|[^\s&]+)",
            re.I,
        ),
        r"\1=[redacted]",
    ),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "[email]"),
]


def redact(text):
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True
