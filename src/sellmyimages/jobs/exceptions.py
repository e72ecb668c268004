"""Errors raised by the Job Manager."""

from django.core.exceptions import ValidationError


class JobError(Exception):
    """Base class for Job Manager errors."""


class JobNotFound(JobError, LookupError):
    """No job has the given id."""

    def __init__(self, job_id):
        self.job_id = job_id
        super().__init__(f"Job {job_id} not found.")


class InvalidTransition(JobError):
    """The job's status cannot move from one value to another."""

    def __init__(self, from_status, to_status, reason=""):
        self.from_status = from_status
        self.to_status = to_status
        message = f"Cannot change a job from {from_status!r} to {to_status!r}."
        if reason:
            message = f"{message[:-1]}: {reason}."
        super().__init__(message)


class ConcurrentUpdate(InvalidTransition):
    """Another process changed the job's status first."""


class JobValidationError(JobError, ValidationError):
    """Input to the Job Manager is invalid; `field` names the culprit."""

    def __init__(self, field, message, code="invalid"):
        self.field = field
        JobError.__init__(self, f"{field}: {message}")
        ValidationError.__init__(self, {field: [message]}, code=code)

    def __str__(self):
        return f"{self.field}: {self.message_dict[self.field][0]}"
