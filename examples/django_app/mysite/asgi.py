import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
from mysite.tracing import setup_tracing  # noqa: E402

setup_tracing()
from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()

from mysite.try_it import print_curl  # noqa: E402

print_curl()
