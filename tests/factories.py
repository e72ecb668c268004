"""Helpers that create jobs through the JobManager for tests."""

from sellmyimages.catalog.images import catalog_path, inspect_image
from sellmyimages.jobs.manager import job_manager


def make_job(catalog_name, resolution="4x", email="buyer@example.com", **extra):
    info = inspect_image(catalog_path(catalog_name))
    return job_manager.create_job(
        resolution=resolution,
        source_kind="catalog",
        source_ref=catalog_name,
        source_path=info.path,
        source_width=info.width,
        source_height=info.height,
        source_format=info.format,
        email=email,
        payment_provider="local",
        **extra,
    )


def force_status(job, *path, actor="test"):
    """Walk a job through the given statuses using only allowed transitions."""
    for status in path:
        if status == "pending" and job_manager.get_job(job.job_id).payment_status == "unpaid":
            job_manager.mark_payment_completed(job.job_id, f"pi_{job.job_id.hex}", actor=actor)
        else:
            job_manager.update_status(job.job_id, status, actor=actor)
    return job_manager.get_job(job.job_id)
