"""What leaves the process: request paths masked, file names relative, user redaction.

A finished profile passes through :meth:`Privacy.apply` on the export worker, after
it is built and before any exporter (OTLP, Pyroscope, file, console, in-memory)
sees it; the resource attributes pass through :meth:`Privacy.resource` when the
exporters are made, and the span's ``otelprof.top_frame`` through
:meth:`Privacy.text`.  Nothing here runs on the request path of an unprofiled
request, and nothing of the request is captured beyond what the integrations put
in the profile (method, path, route, status): never the query string, headers,
cookies, body or local variables.

Private by default (``docs/privacy.md`` lists every exported field):

* ``url_paths="masked"``: a profile whose route template is known is named and
  labelled by the template, and carries no ``url.path``; without a template the
  path is exported with id-like segments replaced by placeholders (:func:`mask_path`:
  ``{id}``, ``{uuid}``, ``{hex}``, ``{email}``, ``{token}``).  ``"raw"`` exports the
  path as received (opt-in), ``"off"`` never exports a path (the profile of a
  request without a template is named by its method alone).
* ``file_paths="relative"``: source file names relative to the longest matching
  root among ``app_root`` (default: the working directory at start-up),
  ``site-packages``, the standard library, ``sys.path`` and the interpreter's
  prefix, else the bare file name; never a home directory or a virtualenv path.
  ``"full"`` keeps absolute paths.
* ``redact_patterns``: regular expressions whose matches become ``***`` in function
  names, file names, the profile name, labels (thread name, span name, route) and
  string attribute values (profile and resource).  Ids (trace, span, profile) are
  never rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import site
import sys
import sysconfig
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Pattern

from .profile import Function, Profile, SpanLink, clean_text

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Privacy", "mask_path", "relative_file_name", "parse_redact_patterns", "REDACTED", "URL_PATH_MODES",
           "FILE_PATH_MODES", "MAX_PATH_CHARS"]

#: what a ``redact_patterns`` match is replaced with
REDACTED = "***"
URL_PATH_MODES = ("masked", "raw", "off")
FILE_PATH_MODES = ("relative", "full")
#: longest request path exported (longer ones are cut, with ``…``)
MAX_PATH_CHARS = 1024

# ---------------------------------------------------------------------------- paths

_PLACEHOLDER = re.compile(r"^(\{[^/{}]*\}|<[^/<>]*>|:[A-Za-z_]\w*)$")  # {id}, <int:pk>, :slug: kept as they are
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NUMBER = re.compile(r"^[0-9]+([-_.,:][0-9]+)*$")  # 42, 2024-01-15, 1.5
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_LONG_HEX = re.compile(r"^(?=[a-fA-F]*[0-9])[0-9a-fA-F]{16,}$")
_SAFE = re.compile(r"^[A-Za-z0-9._~\-]+$")
_EXTENSION = re.compile(r"^(.+?)(\.[A-Za-z][A-Za-z0-9]{0,4})$")
# a word with one short number in it: v1, v2beta, api2, h264, oauth2callback, 2fa
_VERSION_LIKE = re.compile(r"^([A-Za-z]+[0-9]{1,3}[A-Za-z]*|[0-9]{1,3}[A-Za-z]+)$")
_DIGIT_RUN = re.compile(r"[0-9]+")


def _mask_segment(seg: str) -> str:
    if not seg or _PLACEHOLDER.match(seg):
        return seg
    if "@" in seg:
        return "{email}" if _EMAIL.match(seg) else "{token}"
    if not _SAFE.match(seg):  # spaces, %, =, :, +, non-ASCII ...: names, encoded data, tokens
        return "{token}"
    m = _EXTENSION.match(seg)
    stem, ext = (m.group(1), m.group(2)) if m and not _NUMBER.match(seg) else (seg, "")
    if _NUMBER.match(stem):
        return "{id}" + ext
    if _UUID.match(stem):
        return "{uuid}" + ext
    if _LONG_HEX.match(stem):
        return "{hex}" + ext
    has_digit = any(c.isdigit() for c in stem)
    has_letter = any(c.isalpha() for c in stem)
    if has_digit and has_letter and not _VERSION_LIKE.match(stem):
        # letters and digits mixed: a short code with several number runs (a1b2c3, 3f2a9b1),
        # or anything of 8 characters or more (tok_8f3k9, item-12345, user1234)
        if len(stem) >= 8 or len(_DIGIT_RUN.findall(stem)) >= 2:
            return "{token}" + ext
    if len(stem) >= 24 and "-" not in stem and "_" not in stem and "." not in stem:
        return "{token}" + ext  # a long random word (base64 without digits, a signature)
    return seg


def mask_path(path: str) -> str:
    """``path`` with id-like segments replaced: numbers (``{id}``), UUIDs (``{uuid}``),
    hex of 16+ digits (``{hex}``), e-mail addresses (``{email}``) and token-like text
    (``{token}``: letters mixed with digits, long random words, characters outside
    ``A-Z a-z 0-9 . _ ~ -``).  A file extension is kept (``/img/{id}.png``), as are
    template placeholders (``{id}``, ``<int:pk>``, ``:slug``).  At most
    :data:`MAX_PATH_CHARS` characters are kept."""
    if not path:
        return path
    masked = "/".join(_mask_segment(seg) for seg in path[: 4 * MAX_PATH_CHARS].split("/"))
    return _cut(masked, MAX_PATH_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mask_path_tokens(text: str) -> str:
    """Words of ``text`` that start with ``/`` (a path in a span name, ``GET /users/42``) masked."""
    if "/" not in text:
        return text
    return " ".join(mask_path(w) if w.startswith("/") else w for w in text.split(" "))


# ---------------------------------------------------------------------------- file names


def _file_roots(app_root: str) -> tuple[str, ...]:
    """Folders file names are made relative to, longest first (the most specific wins)."""
    found: list[str] = [app_root] if app_root else []
    schemes: list[Mapping[str, str]] = [sysconfig.get_paths()]
    try:
        schemes.append(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
                                                 "installed_base": sys.base_prefix,
                                                 "installed_platbase": sys.base_exec_prefix}))
    except (KeyError, ValueError):  # an unusual scheme: the current paths are enough
        pass
    for paths in schemes:
        found += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)]
    try:
        found += list(site.getsitepackages())
    except AttributeError:  # an old virtualenv's site module
        pass
    try:
        found.append(site.getusersitepackages())
    except AttributeError:
        pass
    found += [p for p in sys.path if isinstance(p, str) and p]
    found += [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    roots: set[str] = set()
    for p in found:
        for q in (os.path.normpath(os.path.abspath(p)), os.path.realpath(p)):
            if os.path.isabs(q) and os.path.dirname(q) != q:  # never the file system's root
                roots.add(q.rstrip(os.sep) + os.sep)
    return tuple(sorted(roots, key=len, reverse=True))


def relative_file_name(filename: str, roots: Iterable[str]) -> str:
    """``filename`` relative to the first of ``roots`` (folders ending in ``os.sep``,
    longest first) that holds it; an absolute name under none of them becomes its
    bare file name.  Pseudo names (``<frozen ...>``, ``<string>``) and relative names
    are kept."""
    if not filename or not os.path.isabs(filename):
        return filename
    name = os.path.normpath(filename)
    for root in roots:
        if name.startswith(root):
            return name[len(root):]
    return os.path.basename(name)


# ---------------------------------------------------------------------------- redaction


def parse_redact_patterns(raw: Any) -> tuple[str, ...]:
    """The ``redact_patterns`` option: a list of regular expressions, a JSON list, or
    one string of comma-separated patterns (a comma inside ``{m,n}``, ``[...]`` or
    ``(...)``, or escaped as ``\\,``, stays in its pattern).  Raises ``ValueError``
    with the reason (a pattern that does not compile, or matches the empty string)."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON list of patterns ({exc})") from None
            if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                raise ValueError("a JSON value must be a list of strings")
        else:
            items = _split_patterns(text)
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise ValueError("must be a list of regular expressions or a comma-separated string of them")
    out: list[str] = []
    for item in items:
        pattern = item.pattern if isinstance(item, re.Pattern) else item
        if not isinstance(pattern, str):
            raise ValueError(f"{pattern!r} is not a string")
        if not pattern:
            continue
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        if compiled.fullmatch(""):
            raise ValueError(f"{pattern!r} matches the empty string (it would rewrite every name)")
        out.append(pattern)
    return tuple(out)


def _split_patterns(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    in_class = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            cur.append(nxt if nxt == "," else c + nxt)  # "\," is a literal comma
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


# ---------------------------------------------------------------------------- the filter


class Privacy:
    """The privacy settings of one profiler, applied to profiles before export."""

    _MAX_CACHE = 8192

    def __init__(self, *, url_paths: str = "masked", file_paths: str = "relative", app_root: str = "",
                 redact_patterns: Iterable[str] = ()) -> None:
        if url_paths not in URL_PATH_MODES:
            raise ValueError(f"url_paths must be one of {', '.join(URL_PATH_MODES)}")
        if file_paths not in FILE_PATH_MODES:
            raise ValueError(f"file_paths must be one of {', '.join(FILE_PATH_MODES)}")
        self.url_paths = url_paths
        self.file_paths = file_paths
        self.app_root = os.path.abspath(app_root or os.getcwd())
        self.patterns: tuple[Pattern[str], ...] = tuple(re.compile(p) for p in redact_patterns)
        self._roots: Optional[tuple[str, ...]] = None
        self._roots_key: Optional[tuple[Any, ...]] = None
        self._files: dict[str, str] = {}
        self._functions: dict[Function, Function] = {}  # as given -> as exported

    @classmethod
    def from_config(cls, config: "Config") -> "Privacy":
        return cls(url_paths=config.url_paths, file_paths=config.file_paths, app_root=config.app_root,
                   redact_patterns=config.redact_patterns)

    # ------------------------------------------------------------------ pieces
    def text(self, s: str) -> str:
        """``s`` with every ``redact_patterns`` match replaced by ``***``, as valid UTF-8."""
        for p in self.patterns:
            s = p.sub(REDACTED, s)
        return clean_text(s)

    def _value(self, v: Any) -> Any:
        return self.text(v) if isinstance(v, str) else v

    def resource(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """Resource attributes with string values redacted."""
        return {k: self._value(v) for k, v in attributes.items()}

    def file_name(self, filename: str) -> str:
        """A source file name as exported (relative, then redacted)."""
        cached = self._files.get(filename)
        if cached is not None:
            return cached
        out = filename
        if self.file_paths == "relative":
            out = relative_file_name(filename, self._current_roots())
        out = self.text(out)
        if len(self._files) >= self._MAX_CACHE:
            self._files.clear()
        self._files[filename] = out
        return out

    def _current_roots(self) -> tuple[str, ...]:
        # sys.path may grow after start-up (an app importing its plugins): rebuilt when it changed
        key = (self.app_root, tuple(p for p in sys.path if isinstance(p, str)))
        if self._roots is None or key != self._roots_key:
            self._roots = _file_roots(self.app_root)
            self._roots_key = key
            self._files.clear()
            self._functions.clear()
        return self._roots

    # ------------------------------------------------------------------ the profile
    def apply(self, profile: Profile) -> Profile:
        """Rewrite ``profile`` in place (it was just built and belongs to no one else yet)
        and return it."""
        self._request_path(profile)
        patterns = bool(self.patterns)
        if self.file_paths == "relative" or patterns:
            done = self._functions
            if len(done) >= self._MAX_CACHE:
                done.clear()
            out = []
            for f in profile.functions:
                g = done.get(f)
                if g is None:
                    g = done[f] = Function(self.text(f.name), self.file_name(f.filename), f.start_line)
                out.append(g)
            profile.functions = out
        if patterns:
            profile.name = self.text(profile.name)
            threads: dict[str, str] = {}  # a few thread names, many samples
            for s in profile.samples:
                if s.thread_name:
                    name = threads.get(s.thread_name)
                    if name is None:
                        name = threads[s.thread_name] = self.text(s.thread_name)
                    s.thread_name = name
            profile.attributes = {k: self.text(v) if isinstance(v, str) else v
                                  for k, v in profile.attributes.items()}
        # span names: the profile's link, and each sample's own (window profiles); a
        # sample's own labels (lock_site: the file and line that created a lock)
        links: dict[SpanLink, SpanLink] = {}
        labels: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        profile.link = self._link(profile.link, links)
        for s in profile.samples:
            if s.link is not None:
                s.link = self._link(s.link, links)
            if s.labels:
                got = labels.get(s.labels)
                if got is None:
                    got = labels[s.labels] = tuple((k, self._label(k, v)) for k, v in s.labels)
                s.labels = got
        return profile

    def _label(self, key: str, value: str) -> str:
        if key.endswith("_site"):  # "file:line": the file name as every other file name
            file, sep, line = value.rpartition(":")
            if sep and line.isdigit():
                return self.file_name(file) + ":" + line
        return self.text(value)

    def _link(self, link: Optional[SpanLink], done: dict[SpanLink, SpanLink]) -> Optional[SpanLink]:
        if link is None or not link.span_name:
            return link
        out = done.get(link)
        if out is None:
            name = link.span_name if self.url_paths == "raw" else _mask_path_tokens(link.span_name)
            name = self.text(name)
            out = done[link] = link if name == link.span_name else dataclasses.replace(link, span_name=name)
        return out

    def _request_path(self, profile: Profile) -> None:
        attrs = profile.attributes
        raw = attrs.get("url.path")
        route = attrs.get("http.route")
        method = attrs.get("http.request.method")
        if not isinstance(raw, str):
            # no path attribute, e.g. the aggregate of a route's short requests, named like a
            # request ("GET /users/42" when the route template was unknown)
            if not (route or self.url_paths == "raw") and isinstance(method, str) and method \
                    and profile.name.startswith(method + " /"):
                path = profile.name[len(method) + 1:]
                shown = mask_path(path) if self.url_paths == "masked" else ""
                profile.name = f"{method} {shown}" if shown else method
            return
        if self.url_paths == "raw":
            shown = _cut(raw, MAX_PATH_CHARS)
        elif self.url_paths == "off" or (isinstance(route, str) and route):
            shown = ""
        else:
            shown = mask_path(raw)
        if shown:
            attrs["url.path"] = shown
        else:
            del attrs["url.path"]  # the route template (http.route) says it, or nothing may
        if raw and raw in profile.name and not (isinstance(route, str) and route and route in profile.name):
            if shown:
                profile.name = profile.name.replace(raw, shown)
            elif isinstance(route, str) and route:
                profile.name = profile.name.replace(raw, route)
            else:  # url_paths="off": named by its method alone
                profile.name = str(method) if isinstance(method, str) and method else "request"
        profile.name = _cut(profile.name, MAX_PATH_CHARS + 32)
