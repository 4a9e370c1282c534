"""Encode profiles as an OTLP ``ExportProfilesServiceRequest`` (opentelemetry-proto 1.45.2,
``v1development``, proto v1.10.0).

* One :class:`ProfilesDictionary` shared by every profile of the request; each table
  starts with its zero element and holds no duplicates.
* One ResourceProfiles (resource attributes as plain ``key`` + value, which is what
  Pyroscope reads) with one ScopeProfiles.
* Two OTLP Profiles per :class:`~otelprof_middleware.profile.Profile` (``sample_type``
  is singular in OTLP), both carrying the same ``profile_id``, time window and
  attributes:

  - **CPU**: ``sample_type = samples/count``, ``period_type = cpu/nanoseconds``,
    ``period = 1``; each sample's value is the **measured CPU nanoseconds** of that
    stack and thread.  Read as OTLP says (each count stands for ``period`` of
    ``period_type``), a count is one nanosecond of CPU, so count x period is the
    CPU time for any consumer.  Why this shape: Grafana Pyroscope
    (``pkg/ingester/otlp/convert.go``) names a profile from
    ``sample_type:unit:period_type:period_unit``; exactly
    ``samples:count:cpu:nanoseconds`` becomes ``process_cpu`` with values
    multiplied by ``period`` (here 1: unchanged), i.e. the profile type
    ``process_cpu:cpu:nanoseconds:cpu:nanoseconds`` that Grafana's "Traces to
    profiles" and the pprof push path use.  Any other CPU shape is named after its
    period type (``cpu:...``) and misses that type; the usual
    ``period = interval`` with tick counts is what we must not send: our rate
    changes within a profile (header boost, governor) and ticks are not CPU time.
  - **Wall**: ``sample_type = wall/nanoseconds``, ``period_type =
    wall/nanoseconds``, ``period`` = the sampling interval (informational);
    values are wall nanoseconds.  Pyroscope names it ``wall`` (its period type)
    and does not scale it: ``wall:wall:nanoseconds:wall:nanoseconds``.

  Every sample has one value (Pyroscope rejects more when a period is set);
  samples with no CPU (or no wall) time are left out of that profile.  No
  sample-count profile is sent: our sample counts are not a CPU measure.
* **Extra sample types** (``profile_types``): one more Profile per type the profile
  measured, ``sample_type`` = the type (``alloc_space/bytes``, ``alloc_objects/count``,
  ``inuse_*``, ``lock_wait/nanoseconds``, ``lock_acquires/count``) and ``period_type``
  = its group with the type's unit (``memory/...``, ``mutex/...``).  Pyroscope names
  an OTLP profile after its period type unless it is the CPU shape (``convert.go``,
  "Custom profile type": the third part of ``type:unit:period_type:period_unit``), so
  these arrive as ``memory:alloc_space:bytes:memory:bytes``,
  ``mutex:lock_wait:nanoseconds:mutex:nanoseconds`` ...: the ``memory`` and ``mutex``
  profile names Grafana shows as memory and mutex profiles, values unchanged
  (already scaled estimates).  ``period`` is the allocation sampling interval for the
  memory types (informational), 1 for the mutex ones.
* Samples link to the profile's span through ``link_index`` (a sample with a link
  of its own, in a window profile, to that span instead); their attributes are
  ``thread.name``, ``span_name`` and ``http.route`` (the route template), which
  Pyroscope turns into labels (``thread_name``, ``span_name``, ``http_route``);
  every Location carries ``profile.frame.type=cpython``.
* Strings are valid UTF-8 (lone surrogates replaced): one bad string must not
  fail a whole batch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from ..profile import EXTRA_TYPES, Profile, clean_text
from ._protowire import LEN, VARINT, Memo, VarintCache, packed, tag

__all__ = ["encode_otlp_request", "DEFAULT_SCOPE_NAME", "FRAME_TYPE"]

DEFAULT_SCOPE_NAME = "otelprof_middleware"
FRAME_TYPE = "cpython"
PlainValue = Union[str, int, float, bool]
RepeatedProfiles = Any  # RepeatedCompositeFieldContainer[pb.Profile]

_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)

# (sample_type, period_type) of the two Profiles emitted per input profile, in order.
CPU_TYPES = (("samples", "count"), ("cpu", "nanoseconds"))
WALL_TYPES = (("wall", "nanoseconds"), ("wall", "nanoseconds"))
CPU_PERIOD = 1  # each count is one nanosecond of CPU (see the module docstring)

# Wire tags (profiles.proto v1.10.0 field numbers) for the hand-written parts.
_D_MAPPING, _D_LOCATION, _D_FUNCTION, _D_STACK = tag(1, LEN), tag(2, LEN), tag(3, LEN), tag(7, LEN)
_LOC_LINES, _LOC_ATTRS = tag(3, LEN), tag(4, LEN)
_LINE_FUNCTION, _LINE_LINE = tag(1, VARINT), tag(2, VARINT)
_FN_NAME, _FN_FILENAME, _FN_START_LINE = tag(1, VARINT), tag(3, VARINT), tag(4, VARINT)
_STACK_LOCATIONS = tag(1, LEN)
_PROFILE_SAMPLE = tag(2, LEN)
_SAMPLE_STACK, _SAMPLE_ATTRS, _SAMPLE_LINK, _SAMPLE_VALUES = tag(1, VARINT), tag(2, LEN), tag(3, VARINT), tag(4, LEN)


def _any_value(value: object) -> AnyValue:
    # bool first: it is a subclass of int
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(1 << 63) <= value < 1 << 63:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))  # does not fit an int64
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=_clean(value if isinstance(value, str) else str(value)))


_clean = clean_text  # protobuf strings must be valid UTF-8: lone surrogates replaced


class _Dictionary:
    """Deduplicating builder of the shared ``ProfilesDictionary`` tables (index 0 = zero element)."""

    def __init__(self) -> None:
        self.strings: list[str] = [""]
        self._strings: dict[str, int] = {"": 0}
        self.functions: list[tuple[int, int, int]] = [(0, 0, 0)]  # name, filename, start_line
        self._functions: dict[tuple[int, int, int], int] = {}
        self.locations: list[tuple[int, int]] = [(0, 0)]  # function_index, line
        self._locations: dict[tuple[int, int], int] = {}
        self.stacks: list[tuple[int, ...]] = [()]
        self._stacks: dict[tuple[int, ...], int] = {(): 0}
        self.links: list[tuple[bytes, bytes]] = [(_ZERO_TRACE_ID, _ZERO_SPAN_ID)]
        self._links: dict[tuple[bytes, bytes], int] = {}
        self.attributes: list[tuple[int, PlainValue]] = [(0, "")]  # key strindex, value
        self._attributes: dict[tuple[str, type, PlainValue], int] = {}
        self._frame_type_attr = 0

    def string(self, s: str) -> int:
        idx = self._strings.get(s)
        if idx is None:
            idx = self._strings[s] = len(self.strings)
            self.strings.append(_clean(s))
        return idx

    def function(self, name: str, filename: str, start_line: int) -> int:
        key = (self.string(name), self.string(filename), start_line)
        idx = self._functions.get(key)
        if idx is None:
            idx = self._functions[key] = len(self.functions)
            self.functions.append(key)
        return idx

    def location(self, function_index: int, line: int) -> int:
        key = (function_index, line)
        idx = self._locations.get(key)
        if idx is None:
            if not self._frame_type_attr:
                self._frame_type_attr = self.attribute("profile.frame.type", FRAME_TYPE)
            idx = self._locations[key] = len(self.locations)
            self.locations.append(key)
        return idx

    def stack(self, location_indices: tuple[int, ...]) -> int:
        idx = self._stacks.get(location_indices)
        if idx is None:
            idx = self._stacks[location_indices] = len(self.stacks)
            self.stacks.append(location_indices)
        return idx

    def link(self, trace_id: bytes, span_id: bytes) -> int:
        key = (trace_id, span_id)
        idx = self._links.get(key)
        if idx is None:
            idx = self._links[key] = len(self.links)
            self.links.append(key)
        return idx

    def attribute(self, key: str, value: PlainValue) -> int:
        ident = (key, type(value), value)  # type keeps True/1/1.0 apart
        idx = self._attributes.get(ident)
        if idx is None:
            idx = self._attributes[ident] = len(self.attributes)
            self.attributes.append((self.string(key), value))
        return idx

    def build_into(self, d: pb.ProfilesDictionary) -> None:
        """Fill ``d``.  The bulky tables (locations, functions, stacks) are written as
        wire bytes and parsed by the protobuf runtime: constructing one Python message
        per entry costs ~10x more."""
        d.string_table.extend(self.strings)
        d.link_table.extend(pb.Link(trace_id=t, span_id=s) for t, s in self.links)
        d.attribute_table.add()
        d.attribute_table.extend(
            pb.KeyValueAndUnit(key_strindex=k, value=_any_value(v)) for k, v in self.attributes[1:]
        )
        vc = VarintCache()
        parts: list[bytes] = [_D_MAPPING, b"\x00", _D_LOCATION, b"\x00", _D_FUNCTION, b"\x00", _D_STACK, b"\x00"]
        frame_attr = _LOC_ATTRS + vc[len(vc[self._frame_type_attr])] + vc[self._frame_type_attr]
        for f, line in self.locations[1:]:
            body = _LINE_FUNCTION + vc[f] + (_LINE_LINE + vc[line] if line else b"")
            body = _LOC_LINES + vc[len(body)] + body + frame_attr
            parts += (_D_LOCATION, vc[len(body)], body)
        for name, filename, start_line in self.functions[1:]:
            body = b"".join(
                (
                    _FN_NAME + vc[name] if name else b"",
                    _FN_FILENAME + vc[filename] if filename else b"",
                    _FN_START_LINE + vc[start_line] if start_line else b"",
                )
            )
            parts += (_D_FUNCTION, vc[len(body)], body)
        for st in self.stacks[1:]:
            ids = packed(st)
            parts += (_D_STACK, vc[len(ids) + 1 + len(vc[len(ids)])], _STACK_LOCATIONS, vc[len(ids)], ids)
        d.MergeFromString(b"".join(parts))


def _profile_attribute_indices(d: _Dictionary, profile: Profile) -> list[int]:
    attrs: dict[str, PlainValue] = dict(profile.attributes)
    if profile.triggers:
        attrs["otelprof.trigger"] = ",".join(profile.triggers)
    attrs["otelprof.name"] = profile.name
    if profile.link is not None and profile.link.is_valid:
        attrs["otelprof.link.source"] = profile.link.source
    return [d.attribute(k, v) for k, v in attrs.items()]  # dict keys: unique


def _add_profiles(d: _Dictionary, profile: Profile, out: RepeatedProfiles) -> None:
    """Append the CPU, the wall and the extra types' Profiles for ``profile`` to ``out``."""
    link = profile.link
    link_index = d.link(link.trace_id_bytes, link.span_id_bytes) if link is not None and link.is_valid else 0

    # Profile-local tables -> dictionary indices (stacks and threads lazily: only used ones).
    fn_index = [d.function(f.name, f.filename, f.start_line) for f in profile.functions]
    loc_index = [d.location(fn_index[loc.function_index], loc.line) for loc in profile.locations]
    stacks = profile.stacks
    stack_map = Memo(lambda i: d.stack(tuple([loc_index[j] for j in stacks[i]])))

    # Merge by OTLP sample identity (stack, attributes, link); the link and the
    # route is per profile; thread.name, the span (its own link, in window profiles)
    # and the sample's own labels (lock_site) are per sample.
    extra = [t for t in profile.extra_types if t in EXTRA_TYPES]
    merged: dict[tuple[int, str, Any, tuple[tuple[str, str], ...]], list[int]] = {}
    for sample in profile.samples:
        key = (stack_map[sample.stack_index], sample.thread_name, sample.link, sample.labels)
        acc = merged.get(key)
        got = sample.values
        if acc is None:
            merged[key] = [sample.cpu_ns, sample.wall_ns, *(got.get(t, 0) for t in extra)]
        else:
            acc[0] += sample.cpu_ns
            acc[1] += sample.wall_ns
            for i, t in enumerate(extra, 2):
                acc[i] += got.get(t, 0)

    # Encode every Profile's samples in one pass; per sample the fields are
    # stack_index, attribute_indices, link_index (the shared prefix) and values.
    vc = VarintCache()
    shared = []  # attributes of every sample of this profile
    route = profile.attributes.get("http.route")
    if isinstance(route, str) and route:
        shared.append(d.attribute("http.route", route))

    def attr_field(key: tuple[str, Any, tuple[tuple[str, str], ...]]) -> bytes:
        # a sample's own link (window profiles) wins over the profile's
        thread_name, own, labels = key
        sample_link = own if own is not None else link
        index = link_index
        if own is not None:
            index = d.link(own.trace_id_bytes, own.span_id_bytes) if own.is_valid else 0
        attrs = [d.attribute("thread.name", thread_name)] if thread_name else []
        if sample_link is not None and sample_link.is_valid and sample_link.span_name:
            attrs.append(d.attribute("span_name", sample_link.span_name))
        attrs += shared
        attrs += [d.attribute(k, v) for k, v in labels]
        ids = packed(attrs)
        return ((_SAMPLE_ATTRS + vc[len(ids)] + ids if attrs else b"") + (_SAMPLE_LINK + vc[index] if index else b"")
                + _SAMPLE_VALUES)

    attr_fields = Memo(attr_field)
    stack_fields = Memo(lambda st: _SAMPLE_STACK + vc[st] if st else b"")
    columns: list[list[bytes]] = [[] for _ in range(2 + len(extra))]  # cpu, wall, extra types
    for (st, thread_name, own_link, labels), vals in merged.items():
        prefix = stack_fields[st] + attr_fields[(thread_name, own_link, labels)]
        n = len(prefix) + 1  # + the values' length byte (one varint is < 128 bytes)
        for col, value in zip(columns, vals):
            if value:
                v = vc[value]
                col += (_PROFILE_SAMPLE, vc[n + len(v)], prefix, vc[len(v)], v)

    attribute_indices = _profile_attribute_indices(d, profile)
    shapes: list[tuple[tuple[tuple[str, str], tuple[str, str]], int]] = [
        (CPU_TYPES, CPU_PERIOD), (WALL_TYPES, profile.period_ns)]
    for t in extra:
        unit, group = EXTRA_TYPES[t]
        shapes.append((((t, unit), (group, unit)),
                       profile.extra_periods.get("alloc_space", 0) if group == "memory" else 1))
    for ((sample_type, period_type), period), samples in zip(shapes, columns):
        prof = out.add(
            sample_type=pb.ValueType(type_strindex=d.string(sample_type[0]), unit_strindex=d.string(sample_type[1])),
            period_type=pb.ValueType(type_strindex=d.string(period_type[0]), unit_strindex=d.string(period_type[1])),
            period=period,
            time_unix_nano=profile.start_time_ns,
            duration_nano=profile.duration_ns,
            profile_id=profile.profile_id,
            attribute_indices=attribute_indices,
        )
        prof.MergeFromString(b"".join(samples))


def encode_otlp_request(
    profiles: Sequence[Profile],
    *,
    resource_attributes: Mapping[str, PlainValue],
    scope_name: str = DEFAULT_SCOPE_NAME,
    scope_version: str,
) -> ExportProfilesServiceRequest:
    """Build one request holding two OTLP Profiles (CPU, wall) per input profile, plus
    one per extra sample type it measured."""
    req = ExportProfilesServiceRequest()
    rp = req.resource_profiles.add()
    rp.resource.attributes.extend(KeyValue(key=_clean(k), value=_any_value(v)) for k, v in resource_attributes.items())
    sp = rp.scope_profiles.add()
    sp.scope.name = _clean(scope_name)
    sp.scope.version = _clean(scope_version)

    d = _Dictionary()
    for profile in profiles:
        _add_profiles(d, profile, sp.profiles)
    d.build_into(req.dictionary)
    return req
