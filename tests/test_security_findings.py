"""One test per finding of the security review (``/work/shared/reviews/security.md``,
issue 12 "Done when"): each reproduces the review's attack or fault and shows the
fixed behaviour, with the client's response unchanged.

Findings whose reproduction already lives next to the code it tests are listed in
:data:`FINDINGS` (``test_every_finding_has_its_test`` checks that each named test
exists); the others are here, named by finding id.  Through the WSGI middleware,
each request here is also made against the bare app: status, headers and body must
be the same.
"""

from __future__ import annotations

import ast
import gzip
import pathlib
import random
import threading
from typing import Any, Callable, Optional

import pytest

from otelprof_middleware import Profiler
from otelprof_middleware.encoding import encode_pprof
from otelprof_middleware.policy import Policy
from otelprof_middleware.profile import SpanLink
from otelprof_middleware.testing import InMemoryProfileExporter
from otelprof_middleware.wsgi import ProfilingMiddleware

from helpers.clock import FakeClock
from helpers.otlp_receiver import OTLPReceiver
from helpers.pprof_decode import decode_pprof

TESTS = pathlib.Path(__file__).resolve().parent

#: finding -> tests (``file::function``) that reproduce it; ``here`` = this file
FINDINGS: dict[str, tuple[str, ...]] = {
    "M1": ("test_policy_header.py::test_without_a_secret_the_header_needs_debug_mode",
           "test_policy_header.py::test_with_a_secret_anyone_presenting_it",
           "test_policy_header.py::test_a_plain_wsgi_app_has_no_debug_mode"),
    "M2": ("test_policy_budgets.py::test_crafted_trace_ids_cannot_starve_slow_and_error_profiles",
           "here::test_M2_crafted_trace_ids_leave_responses_and_the_reserved_budget_alone"),
    "M3": ("test_policy.py::test_literal_path_arming_is_literal",
           "here::test_M3_a_failing_template_looking_path_arms_only_itself"),
    "M4": ("test_credentials.py::test_otlp_headers_never_reach_pyroscope",),
    "M5": ("test_store.py::test_m5_retention_trims_files_rows_and_log_together",),
    "M6": ("test_store.py::test_m6_the_review_bomb_is_refused_fast_in_bounded_memory",),
    "M7": ("here::test_M7_the_reviews_request_leaves_no_private_data", "test_privacy.py::test_no_secret_leaves_the_process"),
    "L1": ("test_policy.py::test_concurrency_cap_holds_under_simultaneous_starts",
           "here::test_L1_simultaneous_requests_never_overshoot_the_cap"),
    "L2": ("test_cli.py::test_l2_index_lines_never_lead_outside_the_folder",),
    "L3": ("test_cli.py::test_l3_no_terminal_control_characters_from_profile_data",),
    "L4": ("test_api.py::test_l4_download_headers_carry_no_data_from_the_folder",),
    "L5": ("test_api.py::test_l5_stacks_as_deep_as_max_stack_depth",),
    "L6": ("test_store.py::test_l6_retention_deletes_only_files_the_exporter_wrote",),
    "L7": ("test_store.py::test_l7_files_0600_in_a_0700_folder_the_exporter_creates",),
    "L8": ("test_delivery_faults.py::test_an_otlp_http_attempt_ends_at_its_deadline_whatever_the_server_trickles",),
    "L9": ("test_credentials.py::test_repr_of_config_shows_no_credential",
           "test_credentials.py::test_config_error_masks_the_header_values",
           "test_credentials.py::test_failed_export_logs_and_stats_show_no_password"),
    "L10": ("test_credentials.py::test_insecure_never_downgrades_an_https_grpc_endpoint",),
    "L11": ("here::test_L11_one_lone_surrogate_never_fails_a_batch",),
    "L12": ("test_policy.py::test_header_value_with_a_lone_surrogate_never_raises",
            "here::test_L12_a_surrogate_header_value_with_a_secret_changes_nothing"),
    "L13": ("test_policy.py::test_policy_state_is_fresh_after_fork",),
    "L14": ("test_asgi_unit.py::test_header_boost_respects_the_governors_rate",),
    "L15": ("test_api.py::test_l15_idle_connections_time_out_and_concurrent_ones_are_capped",),
}


def _test_names(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_finding_has_its_test() -> None:
    assert sorted(FINDINGS) == sorted([f"M{i}" for i in range(1, 8)] + [f"L{i}" for i in range(1, 16)])
    for finding, tests in FINDINGS.items():
        assert tests, finding
        for ref in tests:
            file, _, name = ref.partition("::")
            path = pathlib.Path(__file__) if file == "here" else TESTS / file
            assert name.startswith("test_") and name in _test_names(path), f"{finding}: {ref} does not exist"
            if file == "here":
                assert name.startswith(f"test_{finding}_"), f"{ref} is not named by its finding"


# ----------------------------------------------------------------------------- a WSGI harness

Response = tuple[str, list[tuple[str, str]], bytes]


def _environ(path: str, query: str = "", headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
                               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                               "wsgi.url_scheme": "http"}
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    return environ


def _call(app: Callable[..., Any], environ: dict[str, Any]) -> Response:
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen[:] = [status, list(headers)]

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return seen[0], seen[1], body


def _triggers(environ: dict[str, Any]) -> tuple[str, ...]:
    handle = environ.get("otelprof.handle")
    session = handle.session if handle is not None else None
    return session.triggers if session is not None else ()


class Site:
    """A WSGI app behind the middleware; each request is also made to the bare app,
    and the two responses must be equal."""

    def __init__(self, app: Callable[..., Any], profiler: Profiler) -> None:
        self.app = app
        self.mw = ProfilingMiddleware(app, profiler=profiler)

    def get(self, path: str, query: str = "", headers: Optional[dict[str, str]] = None) -> tuple[str, ...]:
        environ = _environ(path, query, headers)
        status, response_headers, body = _call(self.mw, environ)
        triggers = _triggers(environ)
        # X-Profile-Id is added only for a header-triggered profile (the caller asked for it)
        ids = [v for k, v in response_headers if k.lower() == "x-profile-id"]
        assert len(ids) == (1 if "header" in triggers else 0)
        own = (status, [(k, v) for k, v in response_headers if k.lower() != "x-profile-id"], body)
        assert own == _call(self.app, _environ(path, query, headers)), f"the response to {path} changed"
        return triggers


def _app(clock: Optional[FakeClock] = None, work: Callable[[], None] = lambda: None) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        work()
        query = environ.get("QUERY_STRING", "")
        if query == "slow" and clock is not None:
            clock.advance(6.0)
        status = "500 Internal Server Error" if query == "fail" else "200 OK"
        start_response(status, [("Content-Type", "text/plain"), ("X-App", "1")])
        return [b"page ", environ["PATH_INFO"].encode("utf-8", "surrogateescape")]
    return app


def _policy_profiler(profiler_factory: Any, clock: FakeClock, **options: Any) -> Profiler:
    profiler = profiler_factory(**dict({"exporter": "none", "cpu_trigger": False}, **options))
    profiler.policy = Policy(profiler, clock=clock, rng=random.Random(1), start_threads=False)
    return profiler


# ----------------------------------------------------------------------------- M2, M3, L1, L12


CRAFTED = "00-00000000000000000000000000000001-00000000000000aa-01"


def test_M2_crafted_trace_ids_leave_responses_and_the_reserved_budget_alone(profiler_factory: Any) -> None:
    """The review's e12_traceid.py (probability 0.01, a header secret set): 70 requests
    whose traceparent carries a chosen trace id; then a failing request must still be
    profiled in that minute."""
    clock = FakeClock()
    profiler = _policy_profiler(profiler_factory, clock, probability=0.01, header_secret="s3cret",
                                error_sample_rate=1.0, slow_promotion=False)
    site = Site(_app(clock), profiler)
    crafted = [site.get("/search", headers={"traceparent": CRAFTED}) for _ in range(70)]
    assert crafted.count(("probability",)) == 30  # its own share (half of 60), not 60 as in the review
    site.get("/checkout", "fail")  # arms the path for error profiles ...
    clock.advance(0.5)
    assert "error" in site.get("/checkout")  # ... and the error profile still starts in that minute


def test_M3_a_failing_template_looking_path_arms_only_itself(profiler_factory: Any) -> None:
    """The review's e3_arming.py: a catch-all WSGI app (no route templates) answers 500
    to ``/<path:x>``; other paths are not profiled afterwards, that path is."""
    clock = FakeClock()
    profiler = _policy_profiler(profiler_factory, clock, probability=0.0, header_secret="s3cret",
                                error_sample_rate=1.0, max_profiles_per_minute=1000, slow_promotion=False)
    site = Site(_app(clock), profiler)
    assert site.get("/<path:x>", "fail") == ()
    assert site.get("/{a}", "fail") == ()
    assert set(profiler.policy.state().armed_routes) == {"error:/<path:x>", "error:/{a}"}  # literal paths
    clock.advance(1.0)
    for path in ("/admin/users", "/checkout/42", "/anything/else", "/x"):
        assert site.get(path) == (), path
    assert site.get("/<path:x>") == ("error",)
    assert site.get("/{a}") == ("error",)


def test_L1_simultaneous_requests_never_overshoot_the_cap(profiler_factory: Any) -> None:
    """The review's e2_race.py through the middleware: 24 requests behind a barrier,
    ``max_concurrent_profiles=2``, each holding its slot while the others decide."""
    import sys

    profiler = profiler_factory(exporter="none", probability=1.0, max_concurrent_profiles=2,
                                max_profiles_per_minute=100000, cpu_trigger=False, slow_promotion=False,
                                slow_route_arming=False, error_profile_duration=0)
    at_start, inside = threading.Barrier(24), threading.Barrier(24)

    def work() -> None:
        inside.wait(60)  # all 24 requests are in the app at once: every slot is held

    site = Site(_app(work=work), profiler)
    triggers: list[tuple[str, ...]] = []
    lock = threading.Lock()

    def request() -> None:
        at_start.wait(60)
        t = site.get("/x")
        with lock:
            triggers.append(t)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible while they decide
    try:
        threads = [threading.Thread(target=request) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(switch)
    assert len(triggers) == 24
    assert sum(bool(t) for t in triggers) == 2  # the review saw 5 of 24
    assert profiler.stats()["declined"]["concurrency"] == 22
    assert profiler.active_sessions == 0


def test_L12_a_surrogate_header_value_with_a_secret_changes_nothing(profiler_factory: Any, caplog: Any) -> None:
    """The review's e1_header.py: ``header_secret`` set, a header value with a lone
    surrogate (possible from custom adapters): no error, no traceback, the other
    triggers still run and the response is the app's."""
    profiler = profiler_factory(exporter="none", probability=1.0, header_secret="s3cret", cpu_trigger=False,
                                max_profiles_per_minute=1000)
    site = Site(_app(), profiler)
    with caplog.at_level("DEBUG", logger="otelprof_middleware"):
        assert site.get("/x", headers={"X-Enable-Profiling": "s3cret\udcff"}) == ("probability",)
        assert site.get("/x", headers={"X-Enable-Profiling": "\ud800"}) == ("probability",)
        assert site.get("/x", headers={"X-Enable-Profiling": "s3cret"}) == ("header", "probability")
    assert profiler.stats()["dropped"].get("error", 0) == 0
    assert not [r for r in caplog.records if r.exc_info]


# ----------------------------------------------------------------------------- M7


def test_M7_the_reviews_request_leaves_no_private_data(profiler_factory: Any, tmp_path: Any) -> None:
    """The review's e8_file.py: ``GET /reset-password/tok_SECRET0/user@example.com?api_key=QS_SECRET``
    with ``Authorization: Bearer HDR_SECRET``.  The review found the token and the
    e-mail address in ``index.jsonl`` (and ``url.path`` in OTLP); now neither is in any
    file nor OTLP request, and the profile says which route it was (masked)."""
    with OTLPReceiver() as otlp:
        profiler = profiler_factory(exporter="file,otlp", endpoint=otlp.url, output_dir=str(tmp_path / "p"),
                                    probability=1.0, min_samples=0, cpu_trigger=False)
        site = Site(_app(work=lambda: sum(i * i for i in range(20000)) and None), profiler)
        assert site.get("/reset-password/tok_SECRET0/user@example.com", "api_key=QS_SECRET",
                        headers={"Authorization": "Bearer HDR_SECRET"}) == ("probability",)
        assert profiler.force_flush(30)
        bodies = [r.body for r in otlp.accepted]
    assert bodies
    index = (tmp_path / "p" / "index.jsonl").read_bytes()
    (pb,) = (tmp_path / "p").glob("*.pb.gz")
    raw = gzip.decompress(pb.read_bytes())
    for secret in (b"tok_SECRET", b"user@example.com", b"QS_SECRET", b"HDR_SECRET"):
        for where, data in [("index.jsonl", index), (".pb.gz", raw)] + [("OTLP", b) for b in bodies]:
            assert secret not in data, f"{secret!r} in {where}"
    assert b'"name":"GET /reset-password/{token}/{email}"' in index
    assert b"/reset-password/{token}/{email}" in bodies[0]


# ----------------------------------------------------------------------------- L11


def test_L11_one_lone_surrogate_never_fails_a_batch(profiler_factory: Any, tmp_path: Any) -> None:
    """The review's e13_otlp_surrogate.py: a lone surrogate in a profile's name, its
    ``url.path``, an attribute, a resource value, a thread name and a file name; the profiles of the same batch (and that
    one) are all delivered: OTLP (one batch), pprof files and the index."""
    bad = "caf\udce9"
    memory = InMemoryProfileExporter()
    with OTLPReceiver() as otlp:
        profiler = profiler_factory(exporter="file,otlp", endpoint=otlp.url, output_dir=str(tmp_path / "p"),
                                    probability=1.0, min_samples=0, cpu_trigger=False, batch_size=3,
                                    batch_timeout=60, resource_attributes={"team": bad}, sample_hz=1000)
        profiler.add_exporter(memory)

        def work() -> None:
            code = compile("import time\n"
                           "def hot():\n"
                           "    end = time.thread_time() + 0.05\n"
                           "    while time.thread_time() < end:\n"
                           "        sum(i * i for i in range(100))\n", f"/srv/{bad}.py", "exec")
            scope: dict[str, Any] = {}
            exec(code, scope)
            threading.current_thread().name = f"worker-{bad}"
            scope["hot"]()

        site = Site(_app(work=work), profiler)
        own_name = threading.current_thread().name
        try:
            assert site.get("/ok/1") == ("probability",)
            assert site.get(f"/{bad}/2") == ("probability",)  # WSGI servers decode latin-1; adapters may not
            with profiler.profile(f"job {bad}", **{f"k{bad}": bad}):
                work()
        finally:
            threading.current_thread().name = own_name  # this thread runs the next tests too
        assert profiler.force_flush(30)
        messages = otlp.messages
    assert len(messages) == 1  # one batch of three, delivered whole
    (req,) = messages
    assert sum(len(sp.profiles) for rp in req.resource_profiles for sp in rp.scope_profiles) == 2 * 3
    strings = set(req.dictionary.string_table)  # names, file names, attribute keys
    values = {a.value.string_value for a in req.dictionary.attribute_table}
    assert {"caf\ufffd.py", "kcaf\ufffd"} <= strings
    assert {"job caf\ufffd", "worker-caf\ufffd", "caf\ufffd", "/{token}/{id}"} <= values
    resource = {kv.key: kv.value.string_value for kv in req.resource_profiles[0].resource.attributes}
    assert resource["team"] == "caf\ufffd"
    assert profiler.stats()["dropped"].get("error", 0) == 0
    assert sorted(p.name for p in memory.profiles) == ["GET /ok/{id}", "GET /{token}/{id}", "job caf\ufffd"]
    (job,) = memory.by_name("job caf\ufffd")
    assert job.attributes["kcaf\ufffd"] == "caf\ufffd"
    for p in memory.profiles:  # and every pprof encodes and decodes
        decode_pprof(encode_pprof(p))
    files = list((tmp_path / "p").glob("*.pb.gz"))
    assert len(files) == 3
    index = (tmp_path / "p" / "index.jsonl").read_text("utf-8")
    assert len(index.splitlines()) == 3 and "\udce9" not in index


def test_L11_a_surrogate_span_name_is_cleaned_and_masked() -> None:
    """(L11) a span name from a tracer with a lone surrogate, in pprof labels."""
    from otelprof_middleware.profile import Profile
    from otelprof_middleware.privacy import Privacy

    from otelprof_middleware.profile import Sample

    p = Profile(name="x", start_time_ns=1, duration_ns=1, period_ns=1, stacks=[()], samples=[Sample(0, "t", 1, 1, 1)],
                link=SpanLink(1, 2, span_name="GET /caf\udce9/42"))
    Privacy().apply(p)
    assert p.link is not None and p.link.span_name == "GET /{token}/{id}"
    decoded = decode_pprof(encode_pprof(p))
    assert decoded.string_table.count("GET /{token}/{id}") == 1
