"""Settings of the example project (not for production: DEBUG, fixed secret)."""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"  # runserver loads it too
INSTALLED_APPS = []
DATABASES = {}
USE_TZ = True

MIDDLEWARE = [
    # OpenTelemetry's DjangoInstrumentor inserts its own middleware at position 0
    "otelprof_middleware.django.ProfilingMiddleware",
    "django.middleware.common.CommonMiddleware",
]

# Every option of otelprof-middleware, same names as the keyword arguments and the
# OTELPROF_* environment variables.
OTELPROF = {
    "exporter": os.environ.get("OTELPROF_EXPORTER", "file"),
    "output_dir": str(BASE_DIR / "profiles"),
    "probability": 0.01,                 # 1% of requests
    "header": "X-Enable-Profiling",      # ...plus any request with this header,
    # when its value is the secret (without one, only while DEBUG is True)
    "header_secret": os.environ.get("OTELPROF_HEADER_SECRET") or "change-me",
    "sample_hz": 100,
}
