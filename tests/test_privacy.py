"""Privacy (issue 12 item 5, security review M7): what leaves the process.

* request paths: the route template when known; otherwise masked (``mask_path``);
  raw only with ``url_paths="raw"``; none with ``"off"``;
* file names relative to the application, ``site-packages`` and the standard
  library (``file_paths``, ``app_root``);
* ``redact_patterns`` validated at load and applied to every exported string;
* end to end through a real server: secrets in the path, query, headers, cookie,
  body and a local variable appear in no exported byte (pprof files, index, OTLP,
  Pyroscope, span attributes);
* ``docs/privacy.md`` lists exactly the fields the encoders emit (a real export decoded).
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re
import sqlite3
import sys
import time
from typing import Any, Iterator

import httpx
import pytest

from otelprof_middleware import Config, ConfigError
from otelprof_middleware.asgi import ProfilingMiddleware
from otelprof_middleware.privacy import Privacy, mask_path, parse_redact_patterns, relative_file_name
from otelprof_middleware.profile import Function, Profile, Sample, SpanLink
from otelprof_middleware.testing import InMemoryProfileExporter

from helpers.asgi_server import serve_in_thread
from helpers.otlp_receiver import OTLPReceiver
from helpers.pprof_decode import decode_pprof
from helpers.pyroscope_receiver import PyroscopeReceiver

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "otelprof_middleware"


def spin(seconds: float) -> int:
    """CPU work the sampler can see (a plain function name: it is exported)."""
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += sum(i * i for i in range(200))
    return n


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("path, masked", [
    ("/reset-password/tok_SECRET0/user@example.com", "/reset-password/{token}/{email}"),
    ("/users/42/orders/2024-01-15", "/users/{id}/orders/{id}"),
    ("/files/550e8400-e29b-41d4-a716-446655440000.pdf", "/files/{uuid}.pdf"),
    ("/files/550E8400E29B41D4A716446655440000", "/files/{uuid}"),
    ("/blobs/0123456789abcdef0123", "/blobs/{hex}"),
    ("/img/12345.jpg", "/img/{id}.jpg"),
    ("/commit/3f2a9b1", "/commit/{token}"),
    ("/invite/a1b2c3", "/invite/{token}"),
    ("/orders/item-12345", "/orders/{token}"),
    ("/u/@alice", "/u/{token}"),
    ("/people/John Smith", "/people/{token}"),
    ("/q/a=b&c=d", "/q/{token}"),
    ("/sig/" + "AbCdEfGhIjKlMnOpQrStUvWx", "/sig/{token}"),
    # kept: words, versions, template placeholders, extensions of plain names
    ("/api/v1/oauth2callback/h264", "/api/v1/oauth2callback/h264"),
    ("/static/app.min.js", "/static/app.min.js"),
    ("/items/{id}/<int:pk>/:slug", "/items/{id}/<int:pk>/:slug"),
    ("/", "/"),
    ("", ""),
])
def test_mask_path(path: str, masked: str) -> None:
    assert mask_path(path) == masked


def test_mask_path_caps_the_length() -> None:
    out = mask_path("/a" * 5000)
    assert len(out) <= 1024 and out.endswith("…")


# ----------------------------------------------------------------------------- options


def test_redact_patterns_parse_lists_json_and_commas() -> None:
    assert parse_redact_patterns(["a\\d+", re.compile("b")]) == ("a\\d+", "b")
    assert parse_redact_patterns(r"acme-\d{2,4},[a,b]x,x(1|2,3),foo\,bar") == \
        (r"acme-\d{2,4}", "[a,b]x", "x(1|2,3)", "foo,bar")
    assert parse_redact_patterns('["a,b", "c"]') == ("a,b", "c")
    assert parse_redact_patterns("") == ()


@pytest.mark.parametrize("value, reason", [
    ("ok,(bad", "'(bad' is not a valid regular expression"),
    ("x*", "'x*' matches the empty string"),
    ('["a", 1]', "JSON value must be a list of strings"),
    ("[not json", "not a JSON list of patterns"),
])
def test_redact_patterns_are_validated_at_load_naming_option_value_and_source(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.load(env={"OTELPROF_REDACT_PATTERNS": value})
    text = str(e.value)
    assert text.startswith(f"invalid option redact_patterns={value!r} (from OTELPROF_REDACT_PATTERNS): ")
    assert reason in text


def test_redact_patterns_from_settings_and_keywords() -> None:
    with pytest.raises(ConfigError, match=r"redact_patterns=\['fine', '\(bad'\] \(from OTELPROF\): '\(bad' is not") as e:
        Config.load(settings={"redact_patterns": ["fine", "(bad"]}, settings_name="OTELPROF")
    assert e.value.option == "redact_patterns"
    with pytest.raises(ConfigError, match=r"redact_patterns=3: must be a list"):
        Config.load({"redact_patterns": 3})


def test_privacy_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"url_paths='full'.*must be one of masked, raw, off"):
        Config.load({"url_paths": "full"})
    with pytest.raises(ConfigError, match=r"file_paths='abs'.*must be one of relative, full"):
        Config.load({"file_paths": "abs"})
    with pytest.raises(ConfigError, match=r"app_root='/no/such/folder' \(from OTELPROF_APP_ROOT\): must be an existing"):
        Config.load(env={"OTELPROF_APP_ROOT": "/no/such/folder"})
    c = Config.load(env={})
    assert (c.url_paths, c.file_paths, c.app_root, c.redact_patterns) == ("masked", "relative", "", ())


# ----------------------------------------------------------------------------- file names


def test_file_names_are_relative_to_the_app_site_packages_and_stdlib(tmp_path: Any) -> None:
    import json as stdlib_module

    import pytest as installed_module

    privacy = Privacy(app_root=str(tmp_path))
    assert privacy.file_name(stdlib_module.__file__) == "json/__init__.py"
    assert privacy.file_name(installed_module.__file__) == "pytest/__init__.py"
    assert privacy.file_name(str(tmp_path / "myapp" / "views.py")) == "myapp/views.py"
    assert privacy.file_name("/home/someone/secret-project/tool.py") == "tool.py"  # under no root: its name
    for pseudo in ("<frozen importlib._bootstrap>", "<string>", "", "relative/name.py"):
        assert privacy.file_name(pseudo) == pseudo
    full = Privacy(file_paths="full")
    assert full.file_name(stdlib_module.__file__) == stdlib_module.__file__
    # the most specific root wins (a virtualenv inside the app folder: site-packages)
    roots = ("/app/.venv/lib/python3.11/site-packages/", "/app/")
    assert relative_file_name("/app/.venv/lib/python3.11/site-packages/django/db.py", roots) == "django/db.py"
    assert relative_file_name("/app/../etc/x.py", roots) == "x.py"


def _profile(**overrides: Any) -> Profile:
    p = Profile(name="GET /users/42/tok_abc12345", start_time_ns=time.time_ns(), duration_ns=1_000_000,
                period_ns=10_000_000,
                functions=[Function("customer_acme_report", "/home/someone/acme-app/app.py", 3)],
                samples=[Sample(0, "worker-customer_acme", 1, 10, 10)],
                attributes={"http.request.method": "GET", "url.path": "/users/42/tok_abc12345", "note": "customer_x"},
                link=SpanLink(1, 2, span_name="GET /users/42/tok_abc12345"))
    p.locations = []
    for k, v in overrides.items():
        setattr(p, k, v)
    return p


def test_apply_masks_raw_paths_and_redacts_everything() -> None:
    p = Privacy(redact_patterns=[r"customer_\w+"]).apply(_profile())
    assert p.name == "GET /users/{id}/{token}"
    assert p.attributes["url.path"] == "/users/{id}/{token}"
    assert p.attributes["note"] == "***"
    assert p.functions == [Function("***", "app.py", 3)]
    assert p.samples[0].thread_name == "worker-***"
    assert p.link is not None and p.link.span_name == "GET /users/{id}/{token}"
    assert (p.link.trace_id, p.link.span_id) == (1, 2)


def test_apply_with_a_route_template_exports_no_path() -> None:
    p = _profile(name="GET /users/{user_id}/{token}")
    p.attributes["http.route"] = "/users/{user_id}/{token}"
    Privacy().apply(p)
    assert "url.path" not in p.attributes and p.name == "GET /users/{user_id}/{token}"


def test_apply_raw_and_off() -> None:
    raw = Privacy(url_paths="raw", file_paths="full").apply(_profile())
    assert raw.name == "GET /users/42/tok_abc12345" and raw.attributes["url.path"] == "/users/42/tok_abc12345"
    assert raw.functions[0].filename == "/home/someone/acme-app/app.py"
    off = Privacy(url_paths="off").apply(_profile())
    assert off.name == "GET" and "url.path" not in off.attributes


def test_apply_masks_window_profiles_named_by_a_raw_path_and_their_sample_links() -> None:
    """The aggregate of short requests without a route template carries no url.path: its
    name (method and path) is masked; each sample's own span name too."""
    p = _profile(name="GET /users/42/tok_abc12345")
    del p.attributes["url.path"]
    p.attributes["otelprof.window"] = "aggregate"
    p.samples = [Sample(0, "t", 1, 1, 1, link=SpanLink(3, 4, span_name="GET /users/42/tok_abc12345")),
                 Sample(0, "u", 1, 1, 1, link=SpanLink(5, 6, span_name="GET /users/{id}"))]
    Privacy().apply(p)
    assert p.name == "GET /users/{id}/{token}" and "url.path" not in p.attributes
    assert [s.link.span_name for s in p.samples if s.link] == ["GET /users/{id}/{token}", "GET /users/{id}"]
    assert [(s.link.trace_id, s.link.span_id) for s in p.samples if s.link] == [(3, 4), (5, 6)]
    off = _profile(name="GET /users/42")
    del off.attributes["url.path"]
    assert Privacy(url_paths="off").apply(off).name == "GET"
    routed = _profile(name="GET /users/{user_id}")
    del routed.attributes["url.path"]
    routed.attributes["http.route"] = "/users/{user_id}"
    assert Privacy().apply(routed).name == "GET /users/{user_id}"


def test_apply_rewrites_sample_labels_lock_site_as_a_file_name() -> None:
    p = _profile()
    p.samples = [Sample(0, "t", 1, 1, 1, labels=(("lock_site", "/home/someone/acme-app/db.py:12"),)),
                 Sample(0, "u", 1, 1, 1, labels=(("lock_site", "/home/someone/acme-app/db.py:12"),))]
    Privacy(redact_patterns=["acme"]).apply(p)
    assert [s.labels for s in p.samples] == [(("lock_site", "db.py:12"),)] * 2
    full = _profile()
    full.samples = [Sample(0, "t", 1, 1, 1, labels=(("lock_site", "/srv/acme/db.py:12"),))]
    Privacy(file_paths="full", redact_patterns=["acme"]).apply(full)
    assert full.samples[0].labels == (("lock_site", "/srv/***/db.py:12"),)


# ----------------------------------------------------------------------------- end to end

SECRETS = ("tok_SECRET0", "user@example.com", "QS_SECRET", "HDR_SECRET", "COOKIE_SECRET", "BODY_SECRET",
           "LOCAL_SECRET")


def _app() -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        held = "LOCAL_SECRET:" + body.decode()  # a local variable holding secrets while sampled
        spin(0.08)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok " + str(len(held)).encode()})

    return app


def _folder_bytes(folder: pathlib.Path) -> list[bytes]:
    out: list[bytes] = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        out.append(data)
        if path.suffix == ".gz":
            out.append(gzip.decompress(data))
        if path.name == "index.db":
            with sqlite3.connect(str(path)) as db:
                tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
                for t in tables:
                    out.append(repr(db.execute(f'select * from "{t}"').fetchall()).encode())
    return out


@pytest.fixture
def exported(profiler_factory: Any, otel_tracing: Any, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """One request with secrets everywhere, through uvicorn, exported to files, OTLP and Pyroscope."""
    tracer, spans = otel_tracing
    with OTLPReceiver() as otlp, PyroscopeReceiver() as pyro:
        profiler = profiler_factory(exporter="file,otlp,pyroscope", endpoint=otlp.url, pyroscope_endpoint=pyro.url,
                                    output_dir=str(tmp_path / "profiles"), probability=1.0, min_samples=0,
                                    sample_hz=1000)
        memory = InMemoryProfileExporter()
        profiler.add_exporter(memory)
        mw = ProfilingMiddleware(_app(), profiler=profiler)

        async def traced(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await mw(scope, receive, send)
            with tracer.start_as_current_span(f"{scope['method']} {scope['path']}"):
                await mw(scope, receive, send)

        with serve_in_thread(traced, lifespan="off") as base:
            resp = httpx.post(base + "/reset-password/tok_SECRET0/user@example.com?api_key=QS_SECRET",
                              headers={"Authorization": "Bearer HDR_SECRET", "Cookie": "session=COOKIE_SECRET"},
                              content=b"password=BODY_SECRET", timeout=30)
        assert profiler.force_flush(30)
        yield {"response": resp, "folder": tmp_path / "profiles", "otlp": otlp, "pyro": pyro, "memory": memory,
               "spans": spans.get_finished_spans()}


@pytest.mark.integration
def test_no_secret_leaves_the_process(exported: dict[str, Any]) -> None:
    resp = exported["response"]
    assert resp.status_code == 200 and resp.text == f"ok {len('LOCAL_SECRET:password=BODY_SECRET')}"
    assert "x-profile-id" not in resp.headers  # probability-triggered: the response is the app's own

    (profile,) = exported["memory"].profiles
    assert profile.name == "POST /reset-password/{token}/{email}"
    assert profile.attributes["url.path"] == "/reset-password/{token}/{email}"
    assert profile.sample_count > 0 and any(f.name == "spin" for f in profile.functions)

    blobs: list[bytes] = _folder_bytes(exported["folder"])
    assert any(b"/reset-password/{token}/{email}" in b for b in blobs)
    otlp_requests = exported["otlp"].accepted
    assert otlp_requests
    blobs += [r.body for r in otlp_requests]
    pyro_requests = exported["pyro"].requests
    assert pyro_requests
    for r in pyro_requests:
        blobs.append(r.body)
        blobs.append(repr(r.query).encode())
        for series in r.series:
            blobs.append(repr(series.labels).encode())
            blobs += [gzip.decompress(raw) for raw, _id in series.samples]
    (span,) = [s for s in exported["spans"] if s.attributes and "otelprof.profile_id" in s.attributes]
    blobs.append(repr(dict(span.attributes)).encode())
    for secret in SECRETS:
        leaks = [i for i, b in enumerate(blobs) if secret.encode() in b]
        assert not leaks, f"{secret} leaked"
    # no home folder, checkout or virtualenv path in any exported byte
    for folder in {str(ROOT), sys.prefix, os.path.expanduser("~")} - {"/", ""}:
        assert not [b for b in blobs if folder.encode() in b], folder
    names = {f.filename for f in profile.functions}
    assert "test_privacy.py" in names, names


# ----------------------------------------------------------------------------- docs/privacy.md vs the encoders


def _doc_fields() -> dict[str, set[str]]:
    """``### heading`` -> the backticked names in the first column of its table."""
    text = (ROOT / "docs" / "privacy.md").read_text()
    out: dict[str, set[str]] = {}
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        names = set(re.findall(r"^\| `([^`]+)` \|", body, flags=re.M))
        if names:
            out[heading.strip()] = names
    return out


def _route_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def user(request: Any) -> PlainTextResponse:
        spin(0.03)
        return PlainTextResponse("user")

    def boom(request: Any) -> PlainTextResponse:
        spin(0.03)
        raise RuntimeError("secret message BOOM_SECRET")

    return Starlette(routes=[Route("/users/{user_id}", user), Route("/boom", boom)])


@pytest.mark.integration
def test_privacy_doc_lists_exactly_what_the_encoders_emit(profiler_factory: Any, otel_tracing: Any,
                                                         tmp_path: Any, exported: dict[str, Any]) -> None:
    doc = _doc_fields()
    tracer, spans = otel_tracing
    # a second app: a route template and an error (status, error.type)
    with OTLPReceiver() as otlp:
        profiler = profiler_factory(exporter="file,otlp", endpoint=otlp.url, output_dir=str(tmp_path / "routes"),
                                    probability=1.0, min_samples=0, sample_hz=1000)
        app = ProfilingMiddleware(_route_app(), profiler=profiler)

        async def traced(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            with tracer.start_as_current_span("request"):
                await app(scope, receive, send)

        with serve_in_thread(traced) as base:
            assert httpx.get(base + "/users/7", timeout=30).text == "user"
            assert httpx.get(base + "/boom", timeout=30).status_code == 500
        assert profiler.force_flush(30)
        requests = list(otlp.messages) + [r.message for r in exported["otlp"].accepted if r.message is not None]

    resource, profile_attrs, sample_attrs = set(), set(), set()
    for req in requests:
        d = req.dictionary
        for rp in req.resource_profiles:
            resource |= {kv.key for kv in rp.resource.attributes}
            for sp in rp.scope_profiles:
                for prof in sp.profiles:
                    profile_attrs |= {d.string_table[d.attribute_table[i].key_strindex] for i in prof.attribute_indices}
        sample_attrs |= {d.string_table[a.key_strindex] for a in list(d.attribute_table)[1:]} - profile_attrs
    assert {"http.route", "url.path", "error.type", "http.response.status_code", "otelprof.name"} <= profile_attrs
    assert resource <= doc["OTLP resource attributes"], resource - doc["OTLP resource attributes"]
    assert profile_attrs <= doc["OTLP profile attributes"], profile_attrs - doc["OTLP profile attributes"]
    assert sample_attrs <= doc["OTLP sample attributes"], sample_attrs - doc["OTLP sample attributes"]

    labels: set[str] = set()
    lines: list[dict[str, Any]] = []
    for folder in (tmp_path / "routes", exported["folder"]):
        for f in folder.glob("*.pb.gz"):
            for s in decode_pprof(f.read_bytes()).samples:
                labels |= set(s.labels) | set(s.num_labels)
        lines += [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert {"trace_id", "span_id", "http.route", "thread_name"} <= labels
    assert labels <= doc["pprof labels"], labels - doc["pprof labels"]
    assert lines and all(set(line) == doc["File exporter index"] for line in lines)
    assert all(set(line["attributes"]) <= doc["OTLP profile attributes"] for line in lines)

    span_attrs: set[str] = set()
    for s in list(spans.get_finished_spans()) + list(exported["spans"]):
        span_attrs |= set(s.attributes or {})
    assert span_attrs <= doc["Span attributes"], span_attrs - doc["Span attributes"]
    assert {"otelprof.profile_id", "otelprof.samples", "otelprof.cpu_ms", "otelprof.wall_ms", "otelprof.top_frame",
            "pyroscope.profile.id"} <= span_attrs
    assert not any("BOOM_SECRET" in str(line) for line in lines)  # an exception's message is never exported

    # and nothing documented is stale: each documented attribute name is written by the code
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    for section in ("OTLP resource attributes", "OTLP profile attributes", "OTLP sample attributes",
                    "pprof labels", "Span attributes"):
        for name in doc[section]:
            # (span attributes of the extra profile types are written as f"otelprof.{key}")
            short = name[len("otelprof."):] if name.startswith("otelprof.") else name
            assert f'"{name}"' in source or f'"{short}"' in source, \
                f"docs/privacy.md ({section}) lists {name}, which the code never writes"
