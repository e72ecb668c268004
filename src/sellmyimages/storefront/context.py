from django.conf import settings


def shop(request):
    return {
        "shop_name": settings.SMI_SHOP_NAME,
        "test_mode": settings.SMI_TEST_MODE,
    }
