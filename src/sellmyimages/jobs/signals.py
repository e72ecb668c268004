"""Hooks other code can listen to; each is sent after its change commits.

They correspond to the WordPress actions of the original plugin:
smi_job_created -> job_created, smi_payment_completed -> payment_completed,
smi_job_completed -> job_completed, smi_job_failed -> job_failed.
job_status_changed has no WordPress twin; it carries old_status and
new_status for every transition. Every signal is sent with the keyword
argument `job` (a fresh Job instance) and sender=Job.
"""

from django.dispatch import Signal

job_created = Signal()
payment_completed = Signal()
job_completed = Signal()
# Also sent with `reason` (the failure code).
job_failed = Signal()
# Also sent with `old_status` and `new_status`.
job_status_changed = Signal()
