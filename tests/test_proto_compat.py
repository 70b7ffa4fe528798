"""scripts/proto_compat.py: proto/ stays backward compatible with its committed snapshot.

The first test is the guard on the real contract: the committed snapshot records exactly the current
protos (a breaking edit fails it, and so does a compatible edit made without `make proto-compat
ARGS=--update`, like the stub drift test). The others run the checker on a small fixture proto set of
their own (independent of edits to trainer.proto) and mutate it once per kind of change, asserting the
exact complaint.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys
from typing import List, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "proto_compat.py"

_spec = importlib.util.spec_from_file_location("proto_compat", SCRIPT)
proto_compat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proto_compat)

BASE = """syntax = "proto3";
package fixture.test.v1;
import "google/protobuf/struct.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
  COLOR_GREEN = 2;
  reserved 5;
}

enum Unused {
  UNUSED_ZERO = 0;
}

message Item {
  string name = 1;
  int64 count = 2;
  repeated float values = 3;
  Color color = 4;
  map<string, double> stats = 5;
  google.protobuf.Struct settings = 6;
  oneof payload {
    bytes blob = 7;
    string text = 8;
  }
  optional int32 limit = 9;
  reserved 20;
}

message Extra {
  int32 a = 1;
  int32 b = 2;
}

message GetRequest {
  string key = 1;
}

service Store {
  rpc Get(GetRequest) returns (Item);
  rpc Watch(GetRequest) returns (stream Item);
  rpc Put(stream Item) returns (GetRequest);
}
"""

OTHER = """syntax = "proto3";
package fixture.other.v1;
import "fixture/test/v1/base.proto";

message Wrapper {
  fixture.test.v1.Item item = 1;
}
"""

BASE_FILE = "fixture/test/v1/base.proto"
OTHER_FILE = "fixture/other/v1/other.proto"


@pytest.fixture
def protos(tmp_path) -> Tuple[pathlib.Path, pathlib.Path]:
    """A proto root with the fixture files and a snapshot recorded from them."""
    root, snapshot = tmp_path / "proto", tmp_path / "snapshot.json"
    for rel, text in ((BASE_FILE, BASE), (OTHER_FILE, OTHER)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert proto_compat.main(["--proto-root", str(root), "--snapshot", str(snapshot), "--update"]) == 0
    return root, snapshot


def edit(root: pathlib.Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert text.count(old) == 1, f"fixture edit {old!r} must match exactly once"
    path.write_text(text.replace(old, new))


def check(protos, capsys, *extra: str) -> Tuple[int, List[str], List[str]]:
    """Run the checker; (exit code, BREAKING lines, compatible lines)."""
    root, snapshot = protos
    capsys.readouterr()
    code = proto_compat.main(["--proto-root", str(root), "--snapshot", str(snapshot), *extra])
    lines = capsys.readouterr().out.splitlines()
    return (code, [l.removeprefix("BREAKING: ") for l in lines if l.startswith("BREAKING: ")],
            [l.removeprefix("compatible: ") for l in lines if l.startswith("compatible: ")])


def test_committed_snapshot_records_the_current_protos():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, (
        f"proto/ differs from proto/compat/ludus_v1.snapshot.json:\n{out.stdout}{out.stderr}\n"
        "Breaking changes must be undone (reserve removed numbers); after intentional additions run "
        "`make proto-compat ARGS=--update` and commit the snapshot.")
    # Every .proto under proto/ (the snapshot directory aside) is covered.
    recorded = json.loads((ROOT / "proto/compat/ludus_v1.snapshot.json").read_text())["files"]
    on_disk = sorted(p.relative_to(ROOT / "proto").as_posix() for p in (ROOT / "proto").rglob("*.proto")
                     if p.relative_to(ROOT / "proto").parts[0] != "compat")
    assert recorded == on_disk


def test_unchanged_protos_pass(protos, capsys):
    assert check(protos, capsys) == (0, [], [])


BREAKING_CASES = {
    "field renumbered": (BASE_FILE, "int64 count = 2;", "int64 count = 12;",
                         ["fixture.test.v1.Item.count: renumbered 2 -> 12"]),
    "field retyped": (BASE_FILE, "int64 count = 2;", "int32 count = 2;",
                      ["fixture.test.v1.Item.count (2): type changed from int64 to int32"]),
    "enum field retyped": (BASE_FILE, "Color color = 4;", "int32 color = 4;",
                           ["fixture.test.v1.Item.color (4): type changed from enum fixture.test.v1.Color to int32"]),
    "singular to repeated": (BASE_FILE, "string name = 1;", "repeated string name = 1;",
                             ["fixture.test.v1.Item.name (1): label changed from singular to repeated"]),
    "repeated to singular": (BASE_FILE, "repeated float values = 3;", "float values = 3;",
                             ["fixture.test.v1.Item.values (3): label changed from repeated to singular"]),
    "optional to singular": (BASE_FILE, "optional int32 limit = 9;", "int32 limit = 9;",
                             ["fixture.test.v1.Item.limit (9): label changed from optional to singular"]),
    "map to repeated message": (BASE_FILE, "map<string, double> stats = 5;", "repeated Extra stats = 5;",
                                ["fixture.test.v1.Item.stats (5): type changed from map<string, double> to message fixture.test.v1.Extra",
                                 "fixture.test.v1.Item.stats (5): label changed from map to repeated"]),
    "field moved out of its oneof": (BASE_FILE, "    string text = 8;\n  }", "  }\n  string text = 8;",
                                     ["fixture.test.v1.Item.text (8): oneof changed from payload to (none)"]),
    "field removed": (BASE_FILE, "  int64 count = 2;\n", "",
                      ["fixture.test.v1.Item.count (2): removed without reserving its number"]),
    "field names swapped": (BASE_FILE, "int32 a = 1;\n  int32 b = 2;", "int32 b = 1;\n  int32 a = 2;",
                            ["fixture.test.v1.Extra.a: renumbered 1 -> 2", "fixture.test.v1.Extra.b: renumbered 2 -> 1"]),
    "field reservation dropped": (BASE_FILE, "  reserved 20;\n", "",
                                  ["message fixture.test.v1.Item: reserved number 20 no longer reserved"]),
    "message removed": (BASE_FILE, "message Extra {\n  int32 a = 1;\n  int32 b = 2;\n}\n", "",
                        ["message fixture.test.v1.Extra: removed"]),
    "message renamed": (BASE_FILE, "message Extra {", "message Extra2 {", ["message fixture.test.v1.Extra: removed"]),
    "enum value removed": (BASE_FILE, "  COLOR_GREEN = 2;\n", "",
                           ["fixture.test.v1.Color.COLOR_GREEN (2): removed without reserving its number"]),
    "enum value renumbered": (BASE_FILE, "COLOR_GREEN = 2;", "COLOR_GREEN = 3;",
                              ["fixture.test.v1.Color.COLOR_GREEN: renumbered 2 -> 3"]),
    "enum reserved number reused": (BASE_FILE, "reserved 5;\n}", "COLOR_BLUE = 5;\n}",
                                    ["fixture.test.v1.Color.COLOR_BLUE (5): reuses a reserved number",
                                     "enum fixture.test.v1.Color: reserved number 5 no longer reserved"]),
    "enum removed": (BASE_FILE, "enum Unused {\n  UNUSED_ZERO = 0;\n}\n", "", ["enum fixture.test.v1.Unused: removed"]),
    "rpc removed": (BASE_FILE, "  rpc Put(stream Item) returns (GetRequest);\n", "",
                    ["fixture.test.v1.Store.Put: RPC removed"]),
    "rpc request changed": (BASE_FILE, "rpc Get(GetRequest)", "rpc Get(Extra)",
                            ["fixture.test.v1.Store.Get: request type changed from fixture.test.v1.GetRequest to fixture.test.v1.Extra"]),
    "rpc response changed": (BASE_FILE, "returns (Item);", "returns (Extra);",
                             ["fixture.test.v1.Store.Get: response type changed from fixture.test.v1.Item to fixture.test.v1.Extra"]),
    "rpc response no longer streamed": (BASE_FILE, "returns (stream Item);", "returns (Item);",
                                        ["fixture.test.v1.Store.Watch: response changed from stream to single"]),
    "rpc request no longer streamed": (BASE_FILE, "rpc Put(stream Item)", "rpc Put(Item)",
                                       ["fixture.test.v1.Store.Put: request changed from stream to single"]),
    "field of a second file removed": (OTHER_FILE, "  fixture.test.v1.Item item = 1;\n", "",
                                       ["fixture.other.v1.Wrapper.item (1): removed without reserving its number"]),
}


@pytest.mark.parametrize("case", sorted(BREAKING_CASES))
def test_breaking_change_is_reported_precisely(protos, capsys, case):
    rel, old, new, expected = BREAKING_CASES[case]
    edit(protos[0], rel, old, new)
    code, breaking, _ = check(protos, capsys)
    assert code == 1
    assert sorted(breaking) == sorted(expected)


COMPATIBLE_CASES = {
    "field removed, number reserved": ("int64 count = 2;", "reserved 2;", "fixture.test.v1.Item.count (2): removed, number reserved"),
    "enum value removed, number reserved": ("COLOR_GREEN = 2;", "reserved 2;", "fixture.test.v1.Color.COLOR_GREEN (2): removed, number reserved"),
    "field renamed in place": ("string name = 1;", "string title = 1;",
                               "fixture.test.v1.Item.name (1): renamed to title (JSON name name -> title); "
                               "wire-compatible, but code using the old name must change"),
    "enum value renamed in place": ("COLOR_RED = 1;", "COLOR_ROSE = 1;",
                                    "fixture.test.v1.Color.COLOR_RED (1): renamed to COLOR_ROSE; wire-compatible, "
                                    "but code and JSON using the old name must change"),
}


@pytest.mark.parametrize("case", sorted(COMPATIBLE_CASES))
def test_compatible_change_passes_but_must_be_recorded(protos, capsys, case):
    old, new, expected = COMPATIBLE_CASES[case]
    edit(protos[0], BASE_FILE, old, new)
    assert check(protos, capsys) == (2, [], [expected])
    assert check(protos, capsys, "--update")[0] == 0
    assert check(protos, capsys) == (0, [], [])


def test_additions_are_accepted_and_recorded_with_update(protos, capsys):
    root = protos[0]
    edit(root, BASE_FILE, "  reserved 20;\n", "  reserved 20;\n  string note = 10;\n")
    edit(root, BASE_FILE, "COLOR_GREEN = 2;", "COLOR_GREEN = 2;\n  COLOR_BLUE = 3;")
    edit(root, BASE_FILE, "message GetRequest {", "message Extra3 {\n  bool flag = 1;\n}\n\nmessage GetRequest {")
    edit(root, BASE_FILE, "  rpc Put(", "  rpc Stream(stream GetRequest) returns (stream Extra3);\n  rpc Put(")
    (root / "fixture/new/v1").mkdir(parents=True)
    (root / "fixture/new/v1/new.proto").write_text('syntax = "proto3";\npackage fixture.new.v1;\nmessage Fresh { string id = 1; }\n')

    code, breaking, compatible = check(protos, capsys)
    assert (code, breaking) == (2, [])
    assert sorted(compatible) == sorted([
        "fixture.test.v1.Item.note (10): field added",
        "fixture.test.v1.Color.COLOR_BLUE (3): enum value added",
        "message fixture.test.v1.Extra3: added",
        "message fixture.new.v1.Fresh: added",
        "fixture.test.v1.Store.Stream: RPC added",
        "file fixture/new/v1/new.proto: added",
    ])
    assert check(protos, capsys, "--update")[0] == 0
    assert check(protos, capsys) == (0, [], [])


def test_update_refuses_breaking_changes_unless_allowed(protos, capsys):
    root, snapshot = protos
    recorded = snapshot.read_bytes()
    edit(root, BASE_FILE, "int64 count = 2;", "int32 count = 2;")
    assert check(protos, capsys, "--update")[0] == 1
    assert snapshot.read_bytes() == recorded, "a refused --update must leave the snapshot alone"
    assert check(protos, capsys, "--update", "--allow-breaking")[0] == 0
    assert check(protos, capsys) == (0, [], [])
