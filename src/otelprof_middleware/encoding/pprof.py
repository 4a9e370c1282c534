"""Encode a :class:`~otelprof_middleware.profile.Profile` as a Go-style pprof profile.

Shape (google/pprof ``proto/profile.proto``, Go ``runtime/pprof`` CPU profiles):

* ``kind="all"`` (the local file, the viewer, ``go tool pprof``):
  ``sample_type = [samples/count, cpu/nanoseconds, wall/nanoseconds]``,
  ``default_sample_type = "cpu"`` (consumers would otherwise pick the last type),
  ``period_type = cpu/nanoseconds``, ``period = profile.period_ns``.  ``samples``
  counts stack samples of every kind (a CPU sample, a wall observation of a
  suspended task): it is not a CPU measure, ``cpu`` is (measured nanoseconds);
* ``kind="cpu"`` / ``kind="wall"`` (Grafana Pyroscope): one value per sample,
  ``cpu/nanoseconds`` with period type ``cpu/nanoseconds``, or
  ``wall/nanoseconds`` with period type ``wall/nanoseconds``; samples with no such
  value are left out.  Pyroscope names series ``<__name__>:<type>:<unit>:<period
  type>:<period unit>``, so with ``__name__`` ``process_cpu`` and ``wall`` these
  are ``process_cpu:cpu:nanoseconds:cpu:nanoseconds`` and
  ``wall:wall:nanoseconds:wall:nanoseconds`` -- the same names as the OTLP path
  (:mod:`.otlp`);
* extra sample types (``profile_types``; :data:`~otelprof_middleware.profile.EXTRA_TYPES`):
  ``kind="all"`` appends the ones the profile measured after ``wall``
  (``alloc_objects/count``, ``alloc_space/bytes``, ``inuse_*``, ``lock_acquires/count``,
  ``lock_wait/nanoseconds``; ``go tool pprof -sample_index=alloc_space``).  For
  Pyroscope, ``kind="memory"`` is Go's heap-profile shape (``alloc_objects``,
  ``alloc_space`` [, ``inuse_*``], period type ``space/bytes``, period = the
  sampling interval) and ``kind="mutex"`` Go's mutex shape: ``lock_acquires`` and
  ``lock_wait`` under Go's names ``contentions/count`` and ``delay/nanoseconds``
  (the names Pyroscope's ``/ingest`` recognises as a mutex profile), period type
  ``contentions/count``; samples with no value of the kind are left out.  A sample's own labels (``lock_site``) are string labels;
* one Location per :class:`Location` (id = index + 1, ``mapping_id`` 0, one Line),
  one Function per :class:`Function` (id = index + 1, ``system_name`` left 0 so
  ``go tool pprof`` does not run names such as ``<module>`` through its demangler);
* per-sample string labels ``span_id``/``trace_id`` (valid link: the sample's own
  link when it has one, as in window profiles, else the profile's), ``span_name``,
  ``http.route`` (the route template, from the profile's attributes),
  ``thread_name`` and ``extra_labels``; a key is never repeated on a sample and
  the built-in labels win over ``extra_labels``;
* ``comment`` holds ``otelprof.profile_id=<hex>``.

The protobuf is written by hand (:mod:`._protowire`); per-stack location ids and
per-(thread, link) label sets are encoded once and reused by every sample.
"""

from __future__ import annotations

import zlib
from typing import Mapping

from ..profile import EXTRA_TYPES, Profile, SpanLink, clean_text
from ._protowire import LEN, VARINT, Memo, VarintCache, field_bytes, field_packed, field_varint, packed, tag, varint

__all__ = ["encode_pprof", "SAMPLE_TYPES", "KINDS", "EXTRA_KINDS", "DEFAULT_SAMPLE_TYPE", "GZIP_LEVEL"]

SAMPLE_TYPES: tuple[tuple[str, str], ...] = (("samples", "count"), ("cpu", "nanoseconds"), ("wall", "nanoseconds"))
PERIOD_TYPE: tuple[str, str] = ("cpu", "nanoseconds")
DEFAULT_SAMPLE_TYPE = "cpu"
#: kind -> (sample types, period type, default sample type)
KINDS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, str], str]] = {
    "all": (SAMPLE_TYPES, PERIOD_TYPE, DEFAULT_SAMPLE_TYPE),
    "cpu": ((("cpu", "nanoseconds"),), ("cpu", "nanoseconds"), "cpu"),
    "wall": ((("wall", "nanoseconds"),), ("wall", "nanoseconds"), "wall"),
}
#: kinds made of extra sample types: kind -> (group in EXTRA_TYPES, period type, default sample type)
EXTRA_KINDS: dict[str, tuple[str, tuple[str, str], str]] = {
    "memory": ("memory", ("space", "bytes"), "alloc_space"),
    "mutex": ("mutex", ("contentions", "count"), "delay"),
}
#: Go's names for our types in the ``mutex`` kind
_GO_NAMES = {"lock_acquires": "contentions", "lock_wait": "delay"}
GZIP_LEVEL = 1  # gzip.BestSpeed, as Go's runtime/pprof writes CPU profiles
_RESERVED_LABEL_PREFIX = "pprof::"

# Field numbers of perftools.profiles.Profile
_P_SAMPLE_TYPE, _P_SAMPLE, _P_LOCATION, _P_FUNCTION, _P_STRING_TABLE = 1, 2, 4, 5, 6
_P_TIME, _P_DURATION, _P_PERIOD_TYPE, _P_PERIOD, _P_COMMENT, _P_DEFAULT_TYPE = 9, 10, 11, 12, 13, 14

_TAG_SAMPLE = tag(_P_SAMPLE, LEN)
_TAG_LOCATION = tag(_P_LOCATION, LEN)
_TAG_FUNCTION = tag(_P_FUNCTION, LEN)
_TAG_STRING = tag(_P_STRING_TABLE, LEN)
_ID = tag(1, VARINT)  # Location.id, Function.id
_LOCATION_LINE = tag(4, LEN)
_LINE_FUNCTION_ID = tag(1, VARINT)
_LINE_LINE = tag(2, VARINT)
_FUNCTION_NAME = tag(2, VARINT)
_FUNCTION_FILENAME = tag(4, VARINT)
_FUNCTION_START_LINE = tag(5, VARINT)
_TAG_LOCATION_IDS = tag(1, LEN)  # Sample.location_id (packed)
_TAG_VALUES = tag(2, LEN)  # Sample.value (packed)
_TAG_LABEL = tag(3, LEN)  # Sample.label


class _StringTable:
    """Interns strings; index 0 is always ``""``."""

    def __init__(self) -> None:
        self.strings: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        idx = self._index.get(s)
        if idx is None:
            idx = self._index[s] = len(self.strings)
            self.strings.append(clean_text(s))  # lone surrogates: U+FFFD, never an error
        return idx

    def encode(self) -> bytes:
        parts: list[bytes] = []
        for s in self.strings:
            b = s.encode("utf-8")
            parts += (_TAG_STRING, varint(len(b)), b)
        return b"".join(parts)


def _value_type(type_index: int, unit_index: int) -> bytes:
    return field_varint(1, type_index) + field_varint(2, unit_index)


def _label(key_index: int, str_index: int) -> bytes:
    body = field_varint(1, key_index) + field_varint(2, str_index)
    return _TAG_LABEL + varint(len(body)) + body


def _profile_labels(profile: Profile, link: SpanLink | None) -> list[tuple[str, str]]:
    labels: list[tuple[str, str]] = []
    if link is not None and link.is_valid:
        labels.append(("span_id", link.span_id_hex))
        labels.append(("trace_id", link.trace_id_hex))
        if link.span_name:
            labels.append(("span_name", link.span_name))
    route = profile.attributes.get("http.route")
    if isinstance(route, str) and route:
        labels.append(("http.route", route))  # the template (integrations never set a raw path here)
    return labels


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: gzip container, mtime 0
    return c.compress(data) + c.flush()


def encode_pprof(profile: Profile, *, compress: bool = True, extra_labels: Mapping[str, str] | None = None,
                 kind: str = "all") -> bytes:
    """Serialize ``profile`` as a pprof ``Profile`` (gzip-compressed unless ``compress=False``).
    ``kind``: ``"all"`` (samples, cpu, wall and the extra types measured), ``"cpu"``, ``"wall"``,
    ``"memory"`` or ``"mutex"`` (see the module docstring)."""
    extra = [t for t in profile.extra_types if t in EXTRA_TYPES]
    period = profile.period_ns
    if kind in EXTRA_KINDS:
        group, period_t, default_t = EXTRA_KINDS[kind]
        extra = [t for t in extra if EXTRA_TYPES[t][1] == group]
        types: tuple[tuple[str, str], ...] = tuple((_GO_NAMES.get(t, t), EXTRA_TYPES[t][0]) for t in extra)
        if group == "memory":
            period = profile.extra_periods.get("alloc_space", 0)
        else:
            period = 1
    else:
        types, period_t, default_t = KINDS[kind]
        if kind == "all":
            types = types + tuple((t, EXTRA_TYPES[t][0]) for t in extra)
        else:
            extra = []
    strings = _StringTable()
    s = strings

    sample_types = [field_bytes(_P_SAMPLE_TYPE, _value_type(s(t), s(u))) for t, u in types]

    base_labels = Memo(lambda link: _profile_labels(profile, link))  # by the sample's own link, if any
    extras = [
        (k, str(v)) for k, v in (extra_labels or {}).items() if k and v != "" and not k.startswith(_RESERVED_LABEL_PREFIX)
    ]

    def labels_for(key: tuple[str, SpanLink | None, tuple[tuple[str, str], ...]]) -> bytes:
        thread_name, link, own = key
        pairs = list(base_labels[link if link is not None else profile.link])
        if thread_name:
            pairs.append(("thread_name", thread_name))
        seen = {k for k, _ in pairs}
        for k, v in own:
            if k not in seen:
                pairs.append((k, v))
                seen.add(k)
        pairs.extend((k, v) for k, v in extras if k not in seen)
        return b"".join(_label(s(k), s(v)) for k, v in pairs)

    def stack_prefix_for(stack_index: int) -> bytes:
        payload = packed([i + 1 for i in profile.stacks[stack_index]])
        ids = (_TAG_LOCATION_IDS + varint(len(payload)) + payload) if payload else b""
        return ids + _TAG_VALUES

    # Per sample: tag, length, [location ids + values tag] (per stack), the values'
    # length and bytes, then the labels (per thread); all parts are joined once.
    vc = VarintCache()
    labels_memo = Memo(labels_for)
    prefix_memo = Memo(stack_prefix_for)
    out: list[bytes] = sample_types
    extend = out.extend
    only = None if kind == "all" else ("cpu_ns" if kind == "cpu" else "wall_ns")
    for sample in profile.samples:
        if kind in EXTRA_KINDS:
            got = sample.values
            if not any(got.get(t) for t in extra):
                continue
            values = b"".join(vc[got.get(t, 0)] for t in extra)
        elif only is None:
            values = vc[sample.count] + vc[sample.cpu_ns] + vc[sample.wall_ns]
            if extra:
                got = sample.values
                values += b"".join(vc[got.get(t, 0)] for t in extra)
        else:
            value = getattr(sample, only)
            if not value:
                continue
            values = vc[value]
        prefix = prefix_memo[sample.stack_index]
        labels = labels_memo[(sample.thread_name, sample.link, sample.labels)]
        nv = len(values)  # < 128 (at most 9 values of up to 10 bytes): one length byte
        extend((_TAG_SAMPLE, vc[len(prefix) + 1 + nv + len(labels)], prefix, vc[nv], values, labels))

    append = out.append
    for i, loc in enumerate(profile.locations, 1):
        line = _LINE_FUNCTION_ID + vc[loc.function_index + 1] + (_LINE_LINE + vc[loc.line] if loc.line else b"")
        body = _ID + vc[i] + _LOCATION_LINE + vc[len(line)] + line
        append(_TAG_LOCATION + vc[len(body)] + body)

    for i, fn in enumerate(profile.functions, 1):
        body = b"".join(
            (
                _ID,
                vc[i],
                _FUNCTION_NAME,
                vc[s(fn.name)],
                _FUNCTION_FILENAME if fn.filename else b"",
                vc[s(fn.filename)] if fn.filename else b"",
                _FUNCTION_START_LINE if fn.start_line else b"",
                vc[fn.start_line] if fn.start_line else b"",
            )
        )
        append(_TAG_FUNCTION + vc[len(body)] + body)

    comments = [s(f"otelprof.profile_id={profile.profile_id_hex}")]
    if profile.truncated:
        comments.append(s(f"otelprof.truncated={profile.truncated}"))
    period_type = _value_type(s(period_t[0]), s(period_t[1]))
    default_type = s(default_t)

    append(strings.encode())
    append(field_varint(_P_TIME, profile.start_time_ns))
    append(field_varint(_P_DURATION, profile.duration_ns))
    append(field_bytes(_P_PERIOD_TYPE, period_type))
    append(field_varint(_P_PERIOD, period))
    append(field_packed(_P_COMMENT, comments))
    append(field_varint(_P_DEFAULT_TYPE, default_type))

    data = b"".join(out)
    return _gzip(data) if compress else data
