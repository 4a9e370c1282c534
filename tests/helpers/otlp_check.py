"""Project-owned checker for OTLP ``ExportProfilesServiceRequest`` messages
(opentelemetry-proto 1.45.2 / proto v1.10.0 dictionary rules).

    errors = check_request(req)        # [] when valid
    assert not errors, "\\n".join(errors)

Rules: all 7 dictionary tables present with the zero element at index 0; every
``*_index``/``*_strindex`` in range; attribute keys unique within each
``attribute_indices`` list; Links 16/8 bytes and non-zero (index > 0); every sample
has values or timestamps (equal lengths when both), exactly one value when the
profile has a ``period``; ``profile_id`` 16 non-zero bytes; the resource has a
plain-key ``service.name``; ``key``/``key_strindex`` never both set.
"""

from __future__ import annotations

from typing import Any, Iterable

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest

__all__ = ["check_request"]

_TABLES = (
    "string_table",
    "mapping_table",
    "location_table",
    "function_table",
    "link_table",
    "attribute_table",
    "stack_table",
)


def check_request(req: ExportProfilesServiceRequest, *, require_profile_id: bool = True) -> list[str]:
    errors: list[str] = []
    err = errors.append
    d = req.dictionary
    n = {t: len(getattr(d, t)) for t in _TABLES}

    # --- zero elements ------------------------------------------------------------
    for t in _TABLES:
        if n[t] == 0:
            err(f"dictionary.{t} is empty (index 0 must hold the zero element)")
    if n["string_table"] and d.string_table[0] != "":
        err(f'dictionary.string_table[0] = {d.string_table[0]!r}, must be ""')
    for t in ("mapping_table", "location_table", "function_table", "attribute_table", "stack_table"):
        if n[t] and getattr(d, t)[0].ByteSize() != 0:
            err(f"dictionary.{t}[0] is not the zero element")
    if n["link_table"]:
        z = d.link_table[0]
        if z.trace_id not in (b"", bytes(16)) or z.span_id not in (b"", bytes(8)):
            err("dictionary.link_table[0] is not the zero Link")

    def in_range(index: int, table: str, where: str) -> bool:
        if not 0 <= index < n[table]:
            err(f"{where}: index {index} out of range for {table} (size {n[table]})")
            return False
        return True

    def attribute_list(indices: Iterable[int], where: str) -> None:
        seen: dict[str, int] = {}
        for i in indices:
            if not in_range(i, "attribute_table", where):
                continue
            if i == 0:
                err(f"{where}: attribute index 0 (the null attribute) in a list")
                continue
            key_i = d.attribute_table[i].key_strindex
            key = d.string_table[key_i] if 0 <= key_i < n["string_table"] else f"<strindex {key_i}>"
            if key in seen:
                err(f"{where}: attribute key {key!r} repeated (indices {seen[key]} and {i})")
            seen[key] = i

    # --- dictionary entries -------------------------------------------------------
    for i, m in enumerate(d.mapping_table):
        in_range(m.filename_strindex, "string_table", f"mapping_table[{i}].filename_strindex")
        attribute_list(m.attribute_indices, f"mapping_table[{i}].attribute_indices")
    for i, loc in enumerate(d.location_table):
        in_range(loc.mapping_index, "mapping_table", f"location_table[{i}].mapping_index")
        for j, line in enumerate(loc.lines):
            in_range(line.function_index, "function_table", f"location_table[{i}].lines[{j}].function_index")
        attribute_list(loc.attribute_indices, f"location_table[{i}].attribute_indices")
    for i, f in enumerate(d.function_table):
        for fld in ("name_strindex", "system_name_strindex", "filename_strindex"):
            in_range(getattr(f, fld), "string_table", f"function_table[{i}].{fld}")
        if i and not (f.name_strindex or f.system_name_strindex or f.filename_strindex):
            err(f"function_table[{i}] has no name, system_name or filename")
    for i, link in enumerate(d.link_table):
        if i == 0:
            continue
        if len(link.trace_id) != 16 or link.trace_id == bytes(16):
            err(f"link_table[{i}].trace_id must be 16 non-zero bytes (got {link.trace_id.hex() or 'empty'})")
        if len(link.span_id) != 8 or link.span_id == bytes(8):
            err(f"link_table[{i}].span_id must be 8 non-zero bytes (got {link.span_id.hex() or 'empty'})")
    for i, a in enumerate(d.attribute_table):
        in_range(a.key_strindex, "string_table", f"attribute_table[{i}].key_strindex")
        in_range(a.unit_strindex, "string_table", f"attribute_table[{i}].unit_strindex")
        if a.value.WhichOneof("value") == "string_value_strindex":
            in_range(a.value.string_value_strindex, "string_table", f"attribute_table[{i}].value")
        if i and a.key_strindex == 0:
            err(f"attribute_table[{i}] has an empty key")
    for i, st in enumerate(d.stack_table):
        for j, li in enumerate(st.location_indices):
            in_range(li, "location_table", f"stack_table[{i}].location_indices[{j}]")

    # --- resource / scope / profiles ----------------------------------------------
    if not req.resource_profiles:
        err("request has no resource_profiles")
    for r, rp in enumerate(req.resource_profiles):
        _key_values(rp.resource.attributes, f"resource_profiles[{r}].resource", n, d, err)
        names = [kv.value.string_value for kv in rp.resource.attributes if kv.key == "service.name"]
        if not names or not names[0]:
            err(f"resource_profiles[{r}].resource: no service.name (plain key with a string value)")
        for s, sp in enumerate(rp.scope_profiles):
            _key_values(sp.scope.attributes, f"resource_profiles[{r}].scope_profiles[{s}].scope", n, d, err)
            for p, prof in enumerate(sp.profiles):
                where = f"resource_profiles[{r}].scope_profiles[{s}].profiles[{p}]"
                _check_profile(prof, where, require_profile_id, in_range, attribute_list, err)
    return errors


def _key_values(kvs: Any, where: str, n: dict[str, int], d: Any, err: Any) -> None:
    keys: set[str] = set()
    for i, kv in enumerate(kvs):
        if kv.key and kv.key_strindex:
            err(f"{where}.attributes[{i}]: key and key_strindex both set")
        if kv.key_strindex and not 0 <= kv.key_strindex < n["string_table"]:
            err(f"{where}.attributes[{i}]: key_strindex {kv.key_strindex} out of range")
            continue
        key = kv.key or d.string_table[kv.key_strindex]
        if key in keys:
            err(f"{where}.attributes: key {key!r} repeated")
        keys.add(key)


def _check_profile(prof: Any, where: str, require_profile_id: bool, in_range: Any, attribute_list: Any, err: Any) -> None:
    in_range(prof.sample_type.type_strindex, "string_table", f"{where}.sample_type.type_strindex")
    in_range(prof.sample_type.unit_strindex, "string_table", f"{where}.sample_type.unit_strindex")
    in_range(prof.period_type.type_strindex, "string_table", f"{where}.period_type.type_strindex")
    in_range(prof.period_type.unit_strindex, "string_table", f"{where}.period_type.unit_strindex")
    if prof.sample_type.type_strindex == 0:
        err(f"{where}: sample_type is not set")
    attribute_list(prof.attribute_indices, f"{where}.attribute_indices")
    if prof.profile_id or require_profile_id:
        if len(prof.profile_id) != 16 or prof.profile_id == bytes(16):
            err(f"{where}.profile_id must be 16 non-zero bytes (got {prof.profile_id.hex() or 'empty'})")
    if bool(prof.original_payload_format) != bool(prof.original_payload):
        err(f"{where}: original_payload_format and original_payload must be set together")
    for k, sample in enumerate(prof.samples):
        sw = f"{where}.samples[{k}]"
        in_range(sample.stack_index, "stack_table", f"{sw}.stack_index")
        in_range(sample.link_index, "link_table", f"{sw}.link_index")
        attribute_list(sample.attribute_indices, f"{sw}.attribute_indices")
        nv, nt = len(sample.values), len(sample.timestamps_unix_nano)
        if nv == 0 and nt == 0:
            err(f"{sw}: no values and no timestamps")
        if nv and nt and nv != nt:
            err(f"{sw}: {nv} values vs {nt} timestamps")
        if prof.period and nv > 1:
            err(f"{sw}: {nv} values with period set (one value per sample expected)")
