"""End to end: a plain script profiles a block inside an OpenTelemetry span and
exits without calling shutdown(); the atexit hook must flush the profile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from helpers.pprof_decode import GO_MISSING, decode_pprof, run_go_pprof, stacks_by_function

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import time

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import otelprof_middleware as otelprof

    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("nightly")
    profiler = otelprof.Profiler(exporter="file", output_dir=sys.argv[1])


    def nightly_parse_rows(seconds):
        end = time.monotonic() + seconds
        x = 0
        while time.monotonic() < end:
            for i in range(500):
                x += i
        return x


    def nightly_store_rows(seconds):
        return nightly_parse_rows(seconds)


    def main():
        with tracer.start_as_current_span("nightly-job") as span:
            with profiler.profile("nightly-import", tenant="a"):
                nightly_parse_rows(0.2)
                nightly_store_rows(0.1)
        ctx = span.get_span_context()
        print(json.dumps({"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}))


    main()
    # no profiler.shutdown() / force_flush(): the atexit hook must export the profile
    """
)


def test_script_profile_is_flushed_at_exit(tmp_path):
    script = tmp_path / "nightly.py"
    script.write_text(SCRIPT)
    out = tmp_path / "profiles"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROF_"))}
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout.strip().splitlines()[-1])

    files = sorted(p for p in os.listdir(out) if p.endswith(".pb.gz"))
    assert len(files) == 1, os.listdir(out)
    lines = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["file"] == files[0]
    assert line["name"] == "nightly-import"
    user_attrs = {k: v for k, v in line["attributes"].items() if not k.startswith("otelprof.")}
    assert user_attrs == {"tenant": "a"}
    assert line["attributes"]["otelprof.sampler"] in ("native", "python")  # how it was sampled
    assert line["trace_id"] == ids["trace_id"]
    assert line["span_id"] == ids["span_id"]
    assert line["samples"] > 0

    path = out / files[0]
    names = {n.rsplit(".", 1)[-1] for ns, _, _ in stacks_by_function(decode_pprof(path.read_bytes())) for n in ns}
    assert {"nightly_parse_rows", "nightly_store_rows", "main"} <= names

    text = run_go_pprof(["-top"], str(path))
    if text is None:
        pytest.skip(GO_MISSING)
    for fn in ("nightly_parse_rows", "nightly_store_rows", "main"):
        assert re.search(rf"\s{fn}$", text, re.M), text
    tags = run_go_pprof(["-tags"], str(path))
    assert ids["span_id"] in tags and ids["trace_id"] in tags
