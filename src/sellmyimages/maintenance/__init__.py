"""Keeping jobs moving when processes die: leases, scheduled sweeps, the scheduler.

- leases: a worker's renewable hold on a processing job.
- sweeps: abandonment, recovery, provider polling, expiry reminders and
  file cleanup, each safe to run any number of times.
- scheduler: runs the sweeps on their intervals, in one process at a time.
"""
