"""Runtime settings that the shop owner edits in the admin, and their audit trail.

Each field of ShopSettings overrides one environment setting. An empty
field means "use the environment's value", so a shop that never opens the
settings page runs exactly as its environment configures it.
"""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from sellmyimages.jobs.pricing import parse_factor

SINGLETON_PK = 1
MAX_HOURS = 24 * 365


def hours_field(verbose_name, help_text, minimum=1):
    return models.PositiveIntegerField(
        verbose_name,
        null=True,
        blank=True,
        validators=[MinValueValidator(minimum), MaxValueValidator(MAX_HOURS)],
        help_text=help_text,
    )


def parse_resolutions(text):
    """Return the resolutions in a comma-separated list such as "4x, 8x"."""
    resolutions = [item.strip() for item in text.split(",") if item.strip()]
    for resolution in resolutions:
        try:
            parse_factor(resolution)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc
    if len(set(resolutions)) != len(resolutions):
        raise ValidationError(f"{text!r} lists a resolution more than once.")
    return resolutions


def validate_resolutions(text):
    if not parse_resolutions(text):
        raise ValidationError("List at least one resolution, such as 4x.")


class ShopSettings(models.Model):
    """The one row of runtime overrides; a blank field uses the environment."""

    markup_percentage = models.DecimalField(
        "markup percentage",
        max_digits=7,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(10000)],
        help_text="Markup over the provider cost, in percent, for new orders.",
    )
    download_expiry_hours = hours_field(
        "download expiry hours",
        "How long a newly issued download link works, in hours.",
    )
    reminder_hours = hours_field(
        "reminder hours",
        "Hours before a download link expires that the reminder email is due.",
    )
    abandon_after_hours = hours_field(
        "abandonment timeout hours",
        "Hours after which an unpaid order counts as abandoned.",
    )
    output_retention_hours = hours_field(
        "output retention hours",
        "Hours an upscaled file is kept after its download link expires; "
        "during this grace period the customer can ask for a new link.",
        minimum=0,
    )
    failed_retention_hours = hours_field(
        "failed job retention hours",
        "Hours the files of a failed job are kept after it failed.",
        minimum=0,
    )
    abandoned_retention_hours = hours_field(
        "abandoned job retention hours",
        "Hours the files of an abandoned order are kept after it was abandoned.",
        minimum=0,
    )
    resolutions = models.CharField(
        "allowed resolutions",
        max_length=100,
        blank=True,
        validators=[validate_resolutions],
        help_text="Comma-separated, for example: 4x, 8x.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "shop settings"
        verbose_name_plural = "shop settings"

    def __str__(self):
        return "Shop settings"

    def clean(self):
        # Imported here because the config module imports these models.
        from sellmyimages.shopsettings.config import environment_defaults

        defaults = environment_defaults()
        expiry = self.download_expiry_hours
        if expiry is None:
            expiry = defaults["download_expiry_hours"]
        reminder = self.reminder_hours
        if reminder is None:
            reminder = defaults["reminder_hours"]
        if reminder >= expiry:
            raise ValidationError(
                {
                    "reminder_hours": f"{reminder} hours is not shorter than the "
                    f"download expiry of {expiry} hours; a reminder must come "
                    "before the link expires."
                }
            )

    def save(self, *args, **kwargs):
        self.pk = SINGLETON_PK
        super().save(*args, **kwargs)


class ShopSettingsChange(models.Model):
    """One changed field of the shop settings: who, when, from what to what."""

    changed_at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(max_length=128)
    field = models.CharField(max_length=64)
    old_value = models.CharField(max_length=200)
    new_value = models.CharField(max_length=200)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name = "shop settings change"

    def __str__(self):
        return f"{self.field}: {self.old_value} -> {self.new_value} by {self.actor}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError(
                "Shop settings changes are append-only and cannot be changed."
            )
        super().save(*args, **kwargs)
