"""Prints the one ``curl`` that asks this server for a profile, with the header
secret the settings use (``mysite/wsgi.py`` and ``mysite/asgi.py`` call it when the
server loads the app).  The address comes from the server's command line."""
import sys


def print_curl():
    from django.conf import settings

    args, host, port = sys.argv[1:], "127.0.0.1", "8000"
    for flag, value in zip(args, args[1:] + [""]):
        if flag == "runserver" and value[:1].isdigit():  # runserver [addr:]port
            host, _, port = value.rpartition(":") if ":" in value else (host, "", value)
        elif flag in ("-b", "--bind"):  # gunicorn
            host, _, port = value.rpartition(":")
        elif flag in ("--host", "--port"):  # uvicorn
            host, port = (value, port) if flag == "--host" else (host, value)
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    print(f"otelprof example: ask for a profile with\n"
          f"  curl -i -H 'X-Enable-Profiling: {settings.OTELPROF['header_secret']}' http://{host}:{port}/cpu",
          flush=True)
