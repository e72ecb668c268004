"""Rendering and sending the service's emails."""

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string


def send_templated_email(template, recipient, context):
    """Send templates/notifications/<template>.{subject,txt,html} to recipient."""
    context = {"shop_name": settings.SMI_SHOP_NAME, **context}
    subject = render_to_string(f"notifications/{template}.subject", context).strip()
    text = render_to_string(f"notifications/{template}.txt", context)
    html = render_to_string(f"notifications/{template}.html", context)
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[recipient],
    )
    message.attach_alternative(html, "text/html")
    message.send()
