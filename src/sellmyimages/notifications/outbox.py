"""An email backend that writes each message to the outbox as an .eml file.

Django's file backend appends every message of a connection to one log
file; one complete RFC 5322 file per message is what mail tools open and
what tests and the demo read.
"""

import os
import uuid
from pathlib import Path

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone


class EmailBackend(BaseEmailBackend):
    def __init__(self, *, outbox_dir=None, **kwargs):
        super().__init__(**kwargs)
        self.outbox_dir = Path(outbox_dir or settings.SMI_OUTBOX_DIR)

    def send_messages(self, email_messages):
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        sent = 0
        for message in email_messages:
            stamp = timezone.now().strftime("%Y%m%dT%H%M%S%f")
            name = f"{stamp}-{uuid.uuid4().hex[:12]}.eml"
            temporary = self.outbox_dir / f".{name}.tmp"
            mime = message.message()
            with open(temporary, "wb") as handle:
                handle.write(mime.as_bytes(policy=mime.policy.clone(linesep="\r\n")))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.outbox_dir / name)
            sent += 1
        return sent
