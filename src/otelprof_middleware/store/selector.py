"""The selector language: which profiles an API call, a CLI command or a viewer URL means.

A selector is a list of terms separated by spaces; every term must hold::

    route=/checkout method=POST status=5xx trigger=slow|error duration>250ms
    from=now-1h until=now-30m  tenant.id=acme  trace=0x4bf92f3577b34da6a3ce929d0e0e4736

* ``key=value``, ``key!=value``, ``key>value``, ``>=``, ``<``, ``<=`` and ``key~text``
  (case-insensitive substring).  ``a|b`` means either value.  Values with spaces
  go in double quotes: ``name="GET /a b"``.
* Text keys ``service``, ``name``, ``route``, ``method``: ``=`` is exact, or a glob
  with ``*``/``?`` (``route=/api/*``).
* ``status``: a code or a class (``status=5xx``, ``status>=500``).
* ``trigger``: the profile has that trigger (``trigger!=probability``: it has not).
* ``trace``, ``span``, ``id`` (profile id): hex, with or without ``0x``, or a
  whole ``traceparent`` header; a shorter value is a prefix (``trace=4bf92f35``).
* ``duration``, ``cpu``, ``wall``: a time with a unit (``ns us ms s m h``; a bare
  number is milliseconds); ``samples``: a count.
* ``from``, ``until``: ``now``, ``now-1h`` (``s m h d w``), RFC 3339
  (``2026-11-29T10:00:00Z``, ``2026-11-29``) or unix seconds.
* Any key with a dot (``tenant.id=acme``, ``error.type=KeyError``) or written
  ``attr.<key>`` is a profile attribute.
* A term without an operator finds ids (profile, trace or span, in any of the
  forms above) or, if it is not one, text in the name or route.

Errors raise :class:`SelectorError` naming the bad term and what is allowed.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Selector", "SelectorError", "parse_selector", "parse_time", "parse_id", "KEYS"]

KEYS = ("service", "name", "route", "method", "status", "trigger", "trace", "span", "id", "duration", "cpu",
        "wall", "samples", "from", "until")
_ALIASES = {"trace_id": "trace", "span_id": "span", "profile_id": "id", "profile": "id", "triggers": "trigger",
            "since": "from", "to": "until", "http.route": "route", "http.request.method": "method",
            "service.name": "service", "http.response.status_code": "status"}
_TEXT = {"service": "service", "name": "name", "route": "route", "method": "method"}
_TIMES = {"duration": "duration_ms", "cpu": "cpu_ms", "wall": "wall_ms"}
_OPS = ("!=", ">=", "<=", "=", ">", "<", "~")
_DURATION_UNITS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_REL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_HEX = re.compile(r"^[0-9a-f]+$")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class SelectorError(ValueError):
    """A selector that cannot be read; ``term`` is the bad part."""

    def __init__(self, term: str, problem: str) -> None:
        self.term = term
        self.problem = problem
        super().__init__(f"bad selector term {term!r}: {problem}" if term else f"bad selector: {problem}")


@dataclass(frozen=True)
class Term:
    key: str  # a KEYS entry, "attr" or "text"
    op: str
    values: tuple[str, ...]
    raw: str
    attr: str = ""


@dataclass(frozen=True)
class Selector:
    """A parsed selector.  ``text`` is the canonical form (usable in URLs and the CLI)."""

    terms: tuple[Term, ...] = ()
    text: str = ""
    from_ns: Optional[int] = None
    until_ns: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.text

    def term(self, key: str) -> Optional[Term]:
        for t in self.terms:
            if t.key == key:
                return t
        return None

    def to_sql(self) -> tuple[str, list[Any]]:
        """``(where clause, parameters)`` over the index's ``profiles`` table."""
        parts: list[str] = []
        params: list[Any] = []
        if self.from_ns is not None:
            parts.append("start_ns >= ?")
            params.append(self.from_ns)
        if self.until_ns is not None:
            parts.append("start_ns < ?")
            params.append(self.until_ns)
        for t in self.terms:
            if t.key in ("from", "until"):
                continue
            sql, p = _term_sql(t)
            parts.append(sql)
            params.extend(p)
        return (" AND ".join(parts) if parts else "1"), params

    def pyroscope(self, metric: str = "cpu") -> dict[str, str]:
        """The nearest Grafana Pyroscope query (labels ``service_name`` and ``span_name``)."""
        labels = []
        svc = self.term("service")
        if svc and svc.op == "=" and len(svc.values) == 1 and not _is_glob(svc.values[0]):
            labels.append(f'service_name="{_q(svc.values[0])}"')
        route, method = self.term("route"), self.term("method")
        if route and route.op == "=" and len(route.values) == 1:
            span = route.values[0]
            if method and method.op == "=" and len(method.values) == 1:
                span = f"{method.values[0].upper()} {span}"
            op = "=~" if _is_glob(span) else "="
            labels.append(f'span_name{op}"{_q(_glob_regex(span) if op == "=~" else span)}"')
        name = self.term("name")
        if not route and name and name.op == "=" and len(name.values) == 1:
            op = "=~" if _is_glob(name.values[0]) else "="
            value = _glob_regex(name.values[0]) if op == "=~" else name.values[0]
            labels.append(f'span_name{op}"{_q(value)}"')
        unit = "count" if metric == "samples" else "nanoseconds"
        ptype = f"process_cpu:{metric}:{unit}:cpu:nanoseconds"
        query = ptype + "{" + ", ".join(labels) + "}"
        frm = self.term("from")
        until = self.term("until")
        out = {"query": query, "profile_type": ptype, "label_selector": "{" + ", ".join(labels) + "}",
               "from": frm.values[0] if frm else "now-1h", "until": until.values[0] if until else "now"}
        unsupported = sorted({t.key for t in self.terms if t.key not in ("service", "route", "method", "name",
                                                                          "from", "until")})
        if unsupported:
            out["note"] = ("Pyroscope has no label for " + ", ".join(unsupported) + "; use its flame graph "
                           "filters or trace-id search for those")
        return out


def _q(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _is_glob(s: str) -> bool:
    return "*" in s or "?" in s


def _glob_regex(s: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in s)


def _glob_like(s: str) -> str:
    """A glob as a LIKE pattern with ``\\`` as the escape character."""
    out = []
    for c in s:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


# --------------------------------------------------------------------------- parsing


def _split(text: str) -> list[str]:
    """Terms separated by whitespace; double quotes keep spaces (``\\"`` escapes)."""
    terms: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    quote_start = -1
    while i < n:
        c = text[i]
        if quote_start >= 0:
            if c == "\\" and i + 1 < n:
                cur.append(text[i:i + 2])
                i += 2
                continue
            if c == '"':
                quote_start = -1
            cur.append(c)
        elif c == '"':
            quote_start = i
            cur.append(c)
        elif c.isspace():
            if cur:
                terms.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if quote_start >= 0:
        raise SelectorError("".join(cur), "a double quote is not closed")
    if cur:
        terms.append("".join(cur))
    return terms


def _unquote(value: str, raw: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r'\\(.)', r"\1", value[1:-1])
    if '"' in value:
        raise SelectorError(raw, "quote the whole value: key=\"a value\"")
    return value


def _alternatives(value: str, raw: str) -> tuple[str, ...]:
    if value.startswith('"'):
        return (_unquote(value, raw),)
    return tuple(_unquote(v, raw) for v in value.split("|"))


def parse_id(value: str) -> tuple[str, str]:
    """``(kind, hex)`` from a pasted id: ``kind`` is ``"traceparent"`` (hex = trace id)
    or ``"hex"``.  Accepts ``0x``, upper case, dashes of a UUID, surrounding spaces."""
    v = value.strip().lower()
    m = _TRACEPARENT.match(v)
    if m:
        return "traceparent", m.group(2)
    if v.startswith("0x"):
        v = v[2:]
    v = v.replace("-", "")
    if not v or not _HEX.match(v):
        raise ValueError(value)
    return "hex", v


def parse_time(value: str, now: Optional[float] = None) -> int:
    """Unix nanoseconds from ``now``, ``now-1h``, RFC 3339 or unix seconds."""
    v = value.strip()
    now = time.time() if now is None else now
    m = re.fullmatch(r"now(?:\s*([+-])\s*(\d+(?:\.\d+)?)\s*([smhdw]))?", v)
    if m:
        delta = 0.0
        if m.group(1):
            delta = float(m.group(2)) * _REL_UNITS[m.group(3)] * (1 if m.group(1) == "+" else -1)
        return int((now + delta) * 1e9)
    if re.fullmatch(r"\d{9,10}(\.\d+)?", v):
        return int(float(v) * 1e9)
    if re.fullmatch(r"\d{13}", v):
        return int(v) * 1_000_000
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        return calendar.timegm(time.strptime(v, "%Y-%m-%d")) * 1_000_000_000
    iso = v.replace("z", "Z").replace(" ", "T", 1)
    if iso.endswith("Z"):
        iso = iso[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(value) from None
    if d.tzinfo is None:
        raise ValueError(value)
    delta_t = d - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta_t.days * 86400 + delta_t.seconds) * 1_000_000_000 + delta_t.microseconds * 1000


def _duration_ms(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)?", value.strip())
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "ms"]


def _suggest(key: str) -> str:
    import difflib

    names = list(KEYS) + list(_ALIASES) + ["attr.<key>"]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TIME_HELP = "use now, now-1h (s m h d w), RFC 3339 such as 2026-11-29T10:00:00Z, or unix seconds"


def parse_selector(text: str, *, now: Optional[float] = None) -> Selector:
    """Parse a selector (see the module docstring); raises :class:`SelectorError`."""
    if not isinstance(text, str):
        raise SelectorError("", "expected text")
    if len(text) > 4096:
        raise SelectorError(text[:40] + "…", "longer than 4096 characters")
    if any(ord(c) < 32 and not c.isspace() for c in text):
        raise SelectorError(text, "control characters are not allowed")
    now = time.time() if now is None else now
    terms: list[Term] = []
    from_ns: Optional[int] = None
    until_ns: Optional[int] = None
    canonical: list[str] = []
    for raw in _split(text):
        op = ""
        key = ""
        value = ""
        if raw.startswith('"'):
            at = -1
        else:
            at = min((i for i in (raw.find(o) for o in _OPS) if i > 0), default=-1)
        if at > 0:
            key = raw[:at]
            rest = raw[at:]
            op = next(o for o in _OPS if rest.startswith(o))
            value = rest[len(op):]
        if not op:
            word = _unquote(raw, raw)
            if not word:
                continue
            try:
                kind, hexid = parse_id(word)
                if len(hexid) < 4 or len(hexid) > 32:
                    raise ValueError(word)
                terms.append(Term("text", "id", (hexid, word), raw))
            except ValueError:
                terms.append(Term("text", "~", (word,), raw))
            canonical.append(raw)
            continue
        if not value:
            raise SelectorError(raw, f"no value after {op!r}")
        key = key.strip()
        low = key.lower()
        attr = ""
        if low in _ALIASES:
            key = _ALIASES[low]
        elif low.startswith("attr.") and len(key) > 5:
            attr, key = key[5:], "attr"
        elif "." in key:
            attr, key = key, "attr"
        elif low in KEYS:
            key = low
        else:
            raise SelectorError(raw, f"unknown key {key!r}{_suggest(low)}; keys: {', '.join(KEYS)}, "
                                     "or attr.<key> / any key with a dot for an attribute")
        values = _alternatives(value, raw)
        if any(v == "" for v in values):
            raise SelectorError(raw, "empty value")
        if key in ("from", "until"):
            if op != "=" or len(values) != 1:
                raise SelectorError(raw, f"{key} takes one value after '=' ({key}=now-1h)")
            try:
                ns = parse_time(values[0], now)
            except ValueError:
                raise SelectorError(raw, f"bad time {values[0]!r}: {_TIME_HELP}") from None
            if key == "from":
                from_ns = ns
            else:
                until_ns = ns
        elif key in _TEXT:
            if op not in ("=", "!=", "~"):
                raise SelectorError(raw, f"{key} takes '=', '!=' or '~' (text)")
            if key == "method":
                values = tuple(v.upper() for v in values)
        elif key == "status":
            for v in values:
                if not re.fullmatch(r"[1-5](\d\d|xx|XX)", v):
                    raise SelectorError(raw, f"bad status {v!r}: use a code (500) or a class (5xx)")
                if "x" in v.lower() and op not in ("=", "!="):
                    raise SelectorError(raw, "a status class (5xx) takes '=' or '!='")
            if op == "~":
                raise SelectorError(raw, "status takes = != > >= < <=")
        elif key == "trigger":
            if op not in ("=", "!="):
                raise SelectorError(raw, "trigger takes '=' or '!=' (trigger=slow|error)")
            for v in values:
                if not re.fullmatch(r"[a-z_]{1,32}", v):
                    raise SelectorError(raw, f"bad trigger name {v!r}")
        elif key in ("trace", "span", "id"):
            if op not in ("=", "!="):
                raise SelectorError(raw, f"{key} takes '=' or '!=' (a prefix matches)")
            cleaned = []
            full = {"trace": 32, "span": 16, "id": 32}[key]
            for v in values:
                try:
                    kind, hexid = parse_id(v)
                except ValueError:
                    raise SelectorError(raw, f"{v!r} is not a hex id (0x… and traceparent are fine)") from None
                if kind == "traceparent" and key != "trace":
                    raise SelectorError(raw, "a traceparent names a trace: use trace=…")
                if len(hexid) > full:
                    raise SelectorError(raw, f"a {key} id has at most {full} hex digits")
                cleaned.append(hexid)
            values = tuple(cleaned)
        elif key in _TIMES:
            if op == "~":
                raise SelectorError(raw, f"{key} takes = != > >= < <=")
            try:
                values = tuple(repr(_duration_ms(v)) for v in values)
            except ValueError as e:
                raise SelectorError(raw, f"bad time {e.args[0]!r}: a number with ns, us, ms, s, m or h "
                                         "(a bare number is ms)") from None
        elif key == "samples":
            if op == "~" or not all(re.fullmatch(r"\d+", v) for v in values):
                raise SelectorError(raw, "samples takes a whole number and = != > >= < <=")
        elif key == "attr":
            if not attr or len(attr) > 256:
                raise SelectorError(raw, "bad attribute key")
        terms.append(Term(key, op, values, raw, attr))
        canonical.append(raw)
    if from_ns is not None and until_ns is not None and until_ns <= from_ns:
        raise SelectorError(text, "until is not after from")
    return Selector(tuple(terms), " ".join(canonical), from_ns, until_ns)


# --------------------------------------------------------------------------- SQL

_CMP = {"=": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}


def _any(parts: list[str], op: str) -> str:
    if op == "!=":
        return "NOT (" + " OR ".join(parts) + ")"
    return "(" + " OR ".join(parts) + ")"


def _term_sql(t: Term) -> tuple[str, list[Any]]:
    params: list[Any] = []
    parts: list[str] = []
    if t.key == "text":
        v = t.values[0]
        if t.op == "id":  # an id prefix, or the same word in the name or route
            hi = v + "g"
            pat = "%" + _glob_like(t.values[1]) + "%"
            return ("((profile_id >= ? AND profile_id < ?) OR (trace_id >= ? AND trace_id < ?) "
                    "OR (span_id >= ? AND span_id < ?) OR name LIKE ? ESCAPE '\\' OR route LIKE ? ESCAPE '\\')",
                    [v, hi, v, hi, v, hi, pat, pat])
        pat = "%" + _glob_like(v) + "%"
        return "(name LIKE ? ESCAPE '\\' OR route LIKE ? ESCAPE '\\')", [pat, pat]
    if t.key in _TEXT:
        col = _TEXT[t.key]
        for v in t.values:
            if t.op == "~":
                parts.append(f"{col} LIKE ? ESCAPE '\\'")
                params.append("%" + _glob_like(v) + "%")
            elif _is_glob(v):
                parts.append(f"{col} GLOB ?")
                params.append(v.replace("[", "[[]"))
            else:
                parts.append(f"{col} = ?")
                params.append(v)
        return _any(parts, "!=" if t.op == "!=" else "="), params
    if t.key == "status":
        for v in t.values:
            if "x" in v.lower():
                lo = int(v[0]) * 100
                parts.append("(status >= ? AND status < ?)")
                params += [lo, lo + 100]
            elif t.op in ("=", "!="):
                parts.append("status = ?")
                params.append(int(v))
            else:
                parts.append(f"status {_CMP[t.op]} ?")
                params.append(int(v))
        if t.op == "!=":
            return "(status IS NULL OR " + _any(parts, "!=") + ")", params
        return _any(parts, "="), params
    if t.key == "trigger":
        for v in t.values:
            parts.append("(',' || triggers || ',') LIKE ?")
            params.append(f"%,{v},%")
        return _any(parts, t.op), params
    if t.key in ("trace", "span", "id"):
        col = {"trace": "trace_id", "span": "span_id", "id": "profile_id"}[t.key]
        for v in t.values:
            parts.append(f"({col} >= ? AND {col} < ?)")
            params += [v, v + "g"]
        if t.op == "!=":
            return f"({col} IS NULL OR " + _any(parts, "!=") + ")", params
        return _any(parts, "="), params
    if t.key in _TIMES or t.key == "samples":
        col = _TIMES.get(t.key, "samples")
        for v in t.values:
            parts.append(f"{col} {_CMP['=' if t.op == '!=' else t.op]} ?")
            params.append(float(v))
        return _any(parts, "!=" if t.op == "!=" else "="), params
    if t.key == "attr":
        sub = "id IN (SELECT ref FROM attributes WHERE key = ? AND "
        for v in t.values:
            if t.op == "~":
                parts.append(sub + "value LIKE ? ESCAPE '\\')")
                params += [t.attr, "%" + _glob_like(v) + "%"]
            elif t.op in ("=", "!="):
                if _is_glob(v):
                    parts.append(sub + "value GLOB ?)")
                    params += [t.attr, v.replace("[", "[[]")]
                else:
                    parts.append(sub + "value = ?)")
                    params += [t.attr, v]
            else:
                try:
                    num = float(v)
                except ValueError:
                    parts.append(sub + f"value {_CMP[t.op]} ?)")
                    params += [t.attr, v]
                else:
                    parts.append(sub + f"num IS NOT NULL AND num {_CMP[t.op]} ?)")
                    params += [t.attr, num]
        return _any(parts, "!=" if t.op == "!=" else "="), params
    raise AssertionError(t.key)  # pragma: no cover
