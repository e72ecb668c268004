"""Log formatters: key=value lines by default, JSON lines with SMI_LOG_FORMAT=json.

The code base logs lazy %-style messages made of key=value pairs
("event=job_created job_id=... price=5.00"). KeyValueFormatter prints them
after a timestamp, the level and the logger name. JsonFormatter parses the
pairs into fields of one JSON object per line and keeps the whole message
in "message" whenever it contains text that is not a pair.

A line logged while a background task works on a job gets that job's id
added when the message does not name one itself; see bind_job_id().

Both formatters pass every string through logredact.redact() after
formatting, so a traceback or an `extra` field cannot carry a secret past
the handler's RedactSecretsFilter, which sees only the message.

This module does not import Django, because logging is configured while
the settings load.
"""

import contextvars
import json
import logging
import re
from contextlib import contextmanager
from datetime import UTC, datetime

from sellmyimages.logredact import redact

# The id of the job that the code running in this context works on.
current_job_id = contextvars.ContextVar("smi_current_job_id", default=None)

# key=value where the value is a quoted string (as %r prints it) or runs to
# the next whitespace.
PAIR = re.compile(
    r"""(?:(?<=\s)|^)([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\S*)"""
)

# Attributes every LogRecord has; anything else on a record came from `extra`.
RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

# Types of `extra` values that the formatters print.
PLAIN_TYPES = (str, int, float, bool, type(None))

# Fields the JSON formatter writes itself, which a parsed pair may not replace.
RESERVED_FIELDS = frozenset({"time", "level", "logger", "message", "exc_info"})


@contextmanager
def bind_job_id(job_id):
    """Add job_id=<job_id> to every line logged inside the block that lacks one."""
    token = current_job_id.set(str(job_id) if job_id is not None else None)
    try:
        yield
    finally:
        current_job_id.reset(token)


def parse_pairs(message):
    """Return the key=value pairs of a message and whether it held other text.

    Values quoted by %r lose their quotes. The boolean is True when text
    outside the pairs remains, so the caller knows the pairs alone do not
    carry the whole message.
    """
    fields = {}
    rest = []
    position = 0
    for match in PAIR.finditer(message):
        rest.append(message[position : match.start()])
        position = match.end()
        key, value = match.group(1), match.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        fields[key] = value
    rest.append(message[position:])
    has_other_text = bool("".join(rest).strip())
    return fields, has_other_text


def extra_fields(record):
    """Return the plain values that the caller passed through `extra`.

    Objects such as the `request` that Django's request logger passes are
    left out, because their repr is long and may contain secrets.
    """
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in RECORD_ATTRIBUTES
        and not key.startswith("_")
        and isinstance(value, PLAIN_TYPES)
    }


class KeyValueFormatter(logging.Formatter):
    """Format `<time> level=... logger=... <message>` plus job_id and extra fields."""

    def __init__(self, fmt=None, datefmt=None, style="%", **kwargs):
        fmt = fmt or "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
        super().__init__(fmt, datefmt, style, **kwargs)

    def formatMessage(self, record):
        line = super().formatMessage(record)
        added = []
        extras = extra_fields(record)
        job_id = current_job_id.get()
        if job_id and "job_id" not in extras and "job_id=" not in record.message:
            added.append(f"job_id={job_id}")
        for key, value in extras.items():
            added.append(f"{key}={format_value(value)}")
        if added:
            line = f"{line} {' '.join(added)}"
        return line

    def format(self, record):
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """Format one JSON object per line, with the message's pairs as fields."""

    def format(self, record):
        message = record.getMessage()
        fields, has_other_text = parse_pairs(message)
        created = datetime.fromtimestamp(record.created, UTC)
        document = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        collides = False
        for key, value in [*fields.items(), *extra_fields(record).items()]:
            if key in RESERVED_FIELDS:
                collides = True
                continue
            document[key] = value
        job_id = current_job_id.get()
        if job_id and "job_id" not in document:
            document["job_id"] = job_id
        if has_other_text or collides or not fields:
            document["message"] = message
        if record.exc_info:
            document["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exc_info"] = record.exc_text
        if record.stack_info:
            document["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(redact_values(document), default=str)


def format_value(value):
    text = str(value)
    if not text or any(character.isspace() or character == '"' for character in text):
        return json.dumps(text)
    return text


def redact_values(document):
    cleaned = {}
    for key, value in document.items():
        if not isinstance(value, (int, float, bool)) and value is not None:
            value = redact(str(value))
        cleaned[key] = value
    return cleaned
