from django.conf import settings

from sellmyimages.payments.backends import payments_in_test_mode


def shop(request):
    return {
        "shop_name": settings.SMI_SHOP_NAME,
        "test_mode": payments_in_test_mode(),
        "payment_provider": settings.SMI_PAYMENT_PROVIDER,
    }
