"""Place paid orders and count settled jobs in a database the test process cannot reach.

The PostgreSQL restart test runs on a private server, so it drives the
shop through this module in child processes:

    python -m tests.crash_orders place_orders CATALOG_IMAGE COUNT
    python -m tests.crash_orders count_settled

The Celery tests pay in a child process too, so that the payments enqueue
their tasks through the Celery backend the workers read:

    python -m tests.crash_orders pay_unpaid
"""

import os
import sys


def place_orders(image, count):
    from sellmyimages.catalog.images import catalog_path, inspect_image
    from sellmyimages.jobs.manager import job_manager
    from sellmyimages.payments.service import confirm_payment

    info = inspect_image(catalog_path(image))
    for index in range(count):
        job = job_manager.create_job(
            resolution="4x",
            source_kind="catalog",
            source_ref=image,
            source_path=info.path,
            source_width=info.width,
            source_height=info.height,
            source_format=info.format,
            email=f"buyer{index}@example.com",
            payment_provider="local",
        )
        confirm_payment(
            job.job_id,
            payment_intent_id=f"pi_{job.job_id.hex}",
            amount_paid=job.customer_price,
            currency=job.currency,
            actor="test",
        )


def pay_unpaid():
    """Pay every job awaiting payment, except those whose email starts with "unpaid"."""
    from sellmyimages.jobs.models import Job
    from sellmyimages.payments.service import confirm_payment

    for job in Job.objects.filter(status="awaiting_payment").exclude(email__startswith="unpaid"):
        confirm_payment(
            job.job_id,
            payment_intent_id=f"pi_{job.job_id.hex}",
            amount_paid=job.customer_price,
            currency=job.currency,
            actor="test",
        )


def count_settled():
    from sellmyimages.jobs.models import Job

    total = Job.objects.count()
    settled = Job.objects.filter(
        status="completed",
        notifications__kind="download_ready",
        notifications__sent_at__isnull=False,
    ).count()
    print(f"settled {settled} of {total}")


def main(argv):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sellmyimages.settings")
    import django

    django.setup()
    if argv[0] == "place_orders":
        place_orders(argv[1], int(argv[2]))
    elif argv[0] == "count_settled":
        count_settled()
    elif argv[0] == "pay_unpaid":
        pay_unpaid()
    else:
        raise SystemExit(f"unknown command {argv[0]!r}; use place_orders, pay_unpaid or count_settled")


if __name__ == "__main__":
    main(sys.argv[1:])
