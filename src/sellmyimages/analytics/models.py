from sellmyimages.jobs.models import Job


class SalesReport(Job):
    """The admin's analytics page; a proxy of Job, so it has no table of its own.

    Registering it gives the page an entry on the admin index and a
    permission of its own, analytics.view_salesreport.
    """

    class Meta:
        proxy = True
        verbose_name = "sales report"
        verbose_name_plural = "sales reports"
        default_permissions = ("view",)
