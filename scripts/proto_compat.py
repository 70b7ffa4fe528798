#!/usr/bin/env python3
"""Backward-compatibility check of the wire contract (every .proto under proto/, except proto/compat).

    make proto-compat                 # check: exit 0 = compatible and the snapshot is up to date
    make proto-compat ARGS=--update   # record intentional additions in the snapshot

The protos are compiled with grpc_tools.protoc into a FileDescriptorSet and reduced to a normalised,
human-readable snapshot (messages, fields, enums, services), committed as
proto/compat/ludus_v1.snapshot.json. The current protos are compared with it.

What counts as breaking (exit 1, one line per change). Ludus's contract is the binary protobuf wire
format that every gRPC client speaks, so identity is the field / enum value *number*:
  * a message, enum or service removed (renaming one is a removal: its full name is the identity that
    RPC signatures and field types refer to);
  * a field or enum value removed without `reserved` for its number; a field or enum value moved to
    another number (renumbered); a reservation removed (it would let a number be reused);
  * a field's type changed (int32 -> int64 included: generated code changes type), its label changed
    (singular, optional = explicit presence, repeated, map), or it moved into/out of a oneof;
  * an RPC removed, or its request type, response type or streaming on either side changed.
Compatible changes (exit 2 until recorded with --update, so every proto change shows up in review):
additions of anything, removing a field or enum value whose number is `reserved`, and renaming a
field or enum value in place (same number, same type). A rename keeps the binary wire format, but it
changes the JSON field name and the source of clients that use the name (generated code, the Node
client's plain objects): the report says so, and the snapshot records the new name.

--update refuses to record breaking changes unless --allow-breaking is given as well.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PROTO_ROOT = ROOT / "proto"
DEFAULT_SNAPSHOT = DEFAULT_PROTO_ROOT / "compat" / "ludus_v1.snapshot.json"
EXCLUDED_DIRS = ("compat",)  # relative to the proto root: the snapshot lives there
UPDATE_HINT = "make proto-compat ARGS=--update"

EXIT_OK, EXIT_BREAKING, EXIT_STALE = 0, 1, 2


# -- building the snapshot -------------------------------------------------------------------------

def proto_files(proto_root: pathlib.Path) -> List[str]:
    files = []
    for path in sorted(proto_root.rglob("*.proto")):
        rel = path.relative_to(proto_root)
        if rel.parts[0] not in EXCLUDED_DIRS:
            files.append(rel.as_posix())
    return files


def compile_descriptors(proto_root: pathlib.Path):
    """A FileDescriptorSet of every .proto under proto_root (imports such as google/protobuf/*.proto
    resolve, but only our own files are in the set)."""
    import importlib.resources

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"proto_compat: no .proto files under {proto_root}")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "descriptors.pb"
        code = protoc.main(["protoc", f"-I{proto_root}", f"-I{well_known}", f"--descriptor_set_out={out}", *files])
        if code != 0:
            raise SystemExit(f"proto_compat: protoc failed on {proto_root} (exit {code}); see its messages above")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


_SCALARS = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32", 8: "bool",
    9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64",
}
_TYPE_GROUP, _TYPE_MESSAGE, _TYPE_ENUM = 10, 11, 14
_LABEL_REPEATED, _LABEL_REQUIRED = 3, 2


def _type_name(field) -> str:
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    kind = {_TYPE_MESSAGE: "message", _TYPE_ENUM: "enum", _TYPE_GROUP: "group"}[field.type]
    return f"{kind} {field.type_name.lstrip('.')}"


def _ranges(ranges, inclusive_end: bool) -> List[List[int]]:
    """Reserved ranges as inclusive [start, end] pairs (message ranges are end-exclusive in descriptors)."""
    return [[r.start, r.end if inclusive_end else r.end - 1] for r in ranges]


def _message_snapshot(msg, full_name: str, fd, messages: dict, enums: dict) -> None:
    maps = {f"{full_name}.{n.name}": n for n in msg.nested_type if n.options.map_entry}
    fields = []
    for f in sorted(msg.field, key=lambda f: f.number):
        entry = maps.get(f.type_name.lstrip("."))
        if entry is not None:  # map<K, V>: a repeated synthetic entry message on the wire
            key, value = sorted(entry.field, key=lambda x: x.number)
            label, type_ = "map", f"map<{_type_name(key)}, {_type_name(value)}>"
        elif f.label == _LABEL_REPEATED:
            label, type_ = "repeated", _type_name(f)
        elif f.label == _LABEL_REQUIRED:
            label, type_ = "required", _type_name(f)
        else:  # explicit presence (proto3 `optional`, proto2 optional) vs proto3's implicit presence
            label = "optional" if f.proto3_optional or fd.syntax in ("", "proto2", "editions") else "singular"
            type_ = _type_name(f)
        record = {"number": f.number, "name": f.name, "label": label, "type": type_, "json_name": f.json_name}
        if f.HasField("oneof_index") and not f.proto3_optional:  # synthetic oneofs of `optional` are not real
            record["oneof"] = msg.oneof_decl[f.oneof_index].name
        fields.append(record)
    messages[full_name] = {
        "file": fd.name,
        "fields": fields,
        "reserved_numbers": _ranges(msg.reserved_range, inclusive_end=False),
        "reserved_names": sorted(msg.reserved_name),
    }
    for nested in msg.nested_type:
        if not nested.options.map_entry:
            _message_snapshot(nested, f"{full_name}.{nested.name}", fd, messages, enums)
    for enum in msg.enum_type:
        _enum_snapshot(enum, f"{full_name}.{enum.name}", fd.name, enums)


def _enum_snapshot(enum, full_name: str, file_name: str, enums: dict) -> None:
    enums[full_name] = {
        "file": file_name,
        "values": [{"number": v.number, "name": v.name} for v in sorted(enum.value, key=lambda v: (v.number, v.name))],
        "reserved_numbers": _ranges(enum.reserved_range, inclusive_end=True),
        "reserved_names": sorted(enum.reserved_name),
    }


def build_snapshot(proto_root: pathlib.Path) -> dict:
    fds = compile_descriptors(proto_root)
    messages: dict = {}
    enums: dict = {}
    services: dict = {}
    for fd in fds.file:
        prefix = f"{fd.package}." if fd.package else ""
        for msg in fd.message_type:
            _message_snapshot(msg, prefix + msg.name, fd, messages, enums)
        for enum in fd.enum_type:
            _enum_snapshot(enum, prefix + enum.name, fd.name, enums)
        for svc in fd.service:
            services[prefix + svc.name] = {"file": fd.name, "methods": [
                {"name": m.name, "request": m.input_type.lstrip("."), "response": m.output_type.lstrip("."),
                 "client_streaming": m.client_streaming, "server_streaming": m.server_streaming}
                for m in svc.method
            ]}
    return {
        "about": f"Wire-contract snapshot for scripts/proto_compat.py. Do not edit by hand: after an intentional, "
                 f"compatible proto change run `{UPDATE_HINT}`.",
        "files": sorted(fd.name for fd in fds.file),
        "messages": dict(sorted(messages.items())),
        "enums": dict(sorted(enums.items())),
        "services": dict(sorted(services.items())),
    }


def dumps(obj, indent: int = 0) -> str:
    """JSON with one line per leaf record (a field, an enum value, an RPC), so diffs stay readable."""
    flat = json.dumps(obj)
    is_leaf = isinstance(obj, (dict, list)) and not any(
        isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, dict) for x in v))
        for v in (obj.values() if isinstance(obj, dict) else obj))
    if not isinstance(obj, (dict, list)) or (is_leaf and len(flat) + indent <= 220) or not obj:
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    return "[\n" + ",\n".join(f"{inner}{dumps(v, indent + 2)}" for v in obj) + f"\n{pad}]"


# -- comparing -------------------------------------------------------------------------------------

def _reserved(numbers: List[List[int]], n: int) -> bool:
    return any(lo <= n <= hi for lo, hi in numbers)


def _uncovered(lo: int, hi: int, ranges: List[List[int]]) -> List[Tuple[int, int]]:
    """The parts of [lo, hi] that no range in `ranges` covers (ranges may be as large as `to max`)."""
    gaps, start = [], lo
    for r_lo, r_hi in sorted(ranges):
        if r_hi < start or r_lo > hi:
            continue
        if r_lo > start:
            gaps.append((start, r_lo - 1))
        start = max(start, r_hi + 1)
        if start > hi:
            break
    if start <= hi:
        gaps.append((start, hi))
    return gaps


def _lost_reservations(kind: str, name: str, old: dict, new: dict, breaking: List[str]) -> None:
    for lo, hi in old["reserved_numbers"]:
        for gap_lo, gap_hi in _uncovered(lo, hi, new["reserved_numbers"]):
            span = str(gap_lo) if gap_lo == gap_hi else f"{gap_lo}..{gap_hi}"
            breaking.append(f"{kind} {name}: reserved number {span} no longer reserved")
    for reserved_name in old["reserved_names"]:
        if reserved_name not in new["reserved_names"]:
            breaking.append(f"{kind} {name}: reserved name {reserved_name!r} no longer reserved")


def _compare_messages(old: dict, new: dict, breaking: List[str], compatible: List[str]) -> None:
    for name, om in old.items():
        nm = new.get(name)
        if nm is None:
            breaking.append(f"message {name}: removed")
            continue
        old_fields = {f["number"]: f for f in om["fields"]}
        new_fields = {f["number"]: f for f in nm["fields"]}
        old_by_name = {f["name"]: f for f in om["fields"]}
        new_by_name = {f["name"]: f for f in nm["fields"]}
        for number, of in old_fields.items():
            label = f"{name}.{of['name']} ({number})"
            same_name = new_by_name.get(of["name"])
            if same_name is not None and same_name["number"] != number:  # also catches two fields swapping names
                breaking.append(f"{name}.{of['name']}: renumbered {number} -> {same_name['number']}")
                continue
            nf = new_fields.get(number)
            if nf is None:
                if _reserved(nm["reserved_numbers"], number):
                    compatible.append(f"{label}: removed, number reserved")
                else:
                    breaking.append(f"{label}: removed without reserving its number")
                continue
            if nf["type"] != of["type"]:
                breaking.append(f"{label}: type changed from {of['type']} to {nf['type']}")
            if nf["label"] != of["label"]:
                breaking.append(f"{label}: label changed from {of['label']} to {nf['label']}")
            if nf.get("oneof") != of.get("oneof"):
                breaking.append(f"{label}: oneof changed from {of.get('oneof') or '(none)'} to {nf.get('oneof') or '(none)'}")
            if (nf["name"] != of["name"] and nf["name"] not in old_by_name) or nf["json_name"] != of["json_name"]:
                compatible.append(f"{label}: renamed to {nf['name']} (JSON name {of['json_name']} -> {nf['json_name']}); "
                                  "wire-compatible, but code using the old name must change")
        for number, nf in new_fields.items():
            if number not in old_fields:
                if _reserved(om["reserved_numbers"], number):
                    breaking.append(f"{name}.{nf['name']} ({number}): reuses a reserved number")
                elif nf["name"] not in old_by_name:  # (a known name at a new number is reported as renumbered)
                    compatible.append(f"{name}.{nf['name']} ({number}): field added")
        _lost_reservations("message", name, om, nm, breaking)
    compatible.extend(f"message {name}: added" for name in new if name not in old)


def _compare_enums(old: dict, new: dict, breaking: List[str], compatible: List[str]) -> None:
    for name, oe in old.items():
        ne = new.get(name)
        if ne is None:
            breaking.append(f"enum {name}: removed")
            continue
        old_names = {v["name"]: v["number"] for v in oe["values"]}
        new_names = {v["name"]: v["number"] for v in ne["values"]}
        new_numbers: Dict[int, List[str]] = {}
        for v in ne["values"]:
            new_numbers.setdefault(v["number"], []).append(v["name"])
        old_numbers = set(old_names.values())
        for value, number in old_names.items():
            label = f"{name}.{value} ({number})"
            if value in new_names and new_names[value] != number:
                breaking.append(f"{name}.{value}: renumbered {number} -> {new_names[value]}")
            elif value not in new_names:
                if number in new_numbers:
                    compatible.append(f"{label}: renamed to {'/'.join(new_numbers[number])}; wire-compatible, "
                                      "but code and JSON using the old name must change")
                elif _reserved(ne["reserved_numbers"], number):
                    compatible.append(f"{label}: removed, number reserved")
                else:
                    breaking.append(f"{label}: removed without reserving its number")
        for value, number in new_names.items():
            if value in old_names:
                continue
            if number not in old_numbers and _reserved(oe["reserved_numbers"], number):
                breaking.append(f"{name}.{value} ({number}): reuses a reserved number")
            elif number not in old_numbers:
                compatible.append(f"{name}.{value} ({number}): enum value added")
        _lost_reservations("enum", name, oe, ne, breaking)
    compatible.extend(f"enum {name}: added" for name in new if name not in old)


def _compare_services(old: dict, new: dict, breaking: List[str], compatible: List[str]) -> None:
    for name, osvc in old.items():
        nsvc = new.get(name)
        if nsvc is None:
            breaking.append(f"service {name}: removed")
            continue
        new_methods = {m["name"]: m for m in nsvc["methods"]}
        for om in osvc["methods"]:
            nm = new_methods.get(om["name"])
            label = f"{name}.{om['name']}"
            if nm is None:
                breaking.append(f"{label}: RPC removed")
                continue
            for key, what in (("request", "request type"), ("response", "response type")):
                if nm[key] != om[key]:
                    breaking.append(f"{label}: {what} changed from {om[key]} to {nm[key]}")
            for key, side in (("client_streaming", "request"), ("server_streaming", "response")):
                if nm[key] != om[key]:
                    was, now = ("stream" if om[key] else "single"), ("stream" if nm[key] else "single")
                    breaking.append(f"{label}: {side} changed from {was} to {now}")
        old_methods = {m["name"] for m in osvc["methods"]}
        compatible.extend(f"{name}.{m}: RPC added" for m in new_methods if m not in old_methods)
    compatible.extend(f"service {name}: added" for name in new if name not in old)


def compare(old: dict, new: dict) -> Tuple[List[str], List[str]]:
    """(breaking changes, compatible differences) from snapshot `old` to snapshot `new`."""
    breaking: List[str] = []
    compatible: List[str] = []
    _compare_messages(old["messages"], new["messages"], breaking, compatible)
    _compare_enums(old["enums"], new["enums"], breaking, compatible)
    _compare_services(old["services"], new["services"], breaking, compatible)
    compatible.extend(f"file {f}: added" for f in new["files"] if f not in old["files"])
    return breaking, compatible


# -- command line ----------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="write the snapshot (refused when the change is breaking)")
    parser.add_argument("--allow-breaking", action="store_true", help="with --update: record breaking changes too")
    parser.add_argument("--proto-root", type=pathlib.Path, default=DEFAULT_PROTO_ROOT, help="default: proto/")
    parser.add_argument("--snapshot", type=pathlib.Path, default=DEFAULT_SNAPSHOT, help="default: %(default)s")
    args = parser.parse_args(argv)

    current = build_snapshot(args.proto_root)
    stale = True
    if not args.snapshot.exists():
        if not args.update:
            print(f"proto_compat: no snapshot at {args.snapshot}; create it with `{UPDATE_HINT}`")
            return EXIT_STALE
        breaking, compatible = [], [f"file {f}: added" for f in current["files"]]
    else:
        breaking, compatible = compare(json.loads(args.snapshot.read_text()), current)
        stale = args.snapshot.read_text() != dumps(current) + "\n"  # e.g. a file moved: nothing to report, still record it

    for line in breaking:
        print(f"BREAKING: {line}")
    for line in compatible:
        print(f"compatible: {line}")

    if args.update:
        if breaking and not args.allow_breaking:
            print(f"proto_compat: refusing to update {args.snapshot}: {len(breaking)} breaking change(s) "
                  "(reserve removed numbers instead, or pass --allow-breaking for a new major version)")
            return EXIT_BREAKING
        args.snapshot.parent.mkdir(parents=True, exist_ok=True)
        args.snapshot.write_text(dumps(current) + "\n")
        print(f"proto_compat: wrote {args.snapshot} ({len(current['messages'])} messages, "
              f"{len(current['enums'])} enums, {len(current['services'])} services)")
        return EXIT_OK
    if breaking:
        print(f"proto_compat: {len(breaking)} breaking change(s) against {args.snapshot}")
        return EXIT_BREAKING
    if compatible or stale:
        print(f"proto_compat: compatible, but the snapshot does not record the current protos; run `{UPDATE_HINT}`")
        return EXIT_STALE
    print(f"proto_compat: OK ({len(current['files'])} files match {args.snapshot})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
