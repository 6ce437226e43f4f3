"""docs/protocol.md checked against the code, as the transition tables are (test_states.py):
the frame table is the codec's, and every error code the broker can send is documented
(issue 23, item 7). A client writer reads the doc, not the code: they must not drift."""

from __future__ import annotations

import re

from broker.wire import protocol as p
from tests.helpers import ROOT

DOCUMENT = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
FRAME_ROW = re.compile(r"^\| (\d+) \| ([A-Z_]+) \| [^|]+ \| (.+) \|$", re.MULTILINE)
# Where the broker names an error code: a ProtocolError's code=, a fatal fail() or close(),
# a refused HELLO, an ERROR frame it builds.
CODE_SITES = re.compile(r'(?:code=|\bclose\(|\bfail\(|_refuse\(|\bError\()"([a-z_]+)"')
# Built at run time by routing.validate_topic/validate_pattern: f"bad_{kind}".
BUILT_CODES = {"bad_topic", "bad_pattern"}


def test_the_frame_table_is_the_codec_s_types_and_fields() -> None:
    rows = {int(number): (name, re.findall(r"`([a-z_]+)`", fields))
            for number, name, fields in FRAME_ROW.findall(DOCUMENT)}
    assert {number: name for number, (name, _) in rows.items()} == {
        frame_type.value: frame_type.name for frame_type in p.FrameType}
    for number, (cls, _) in p._SCHEMA.items():
        assert tuple(rows[number][1]) == cls._fields, p.FrameType(number).name


def test_every_error_code_the_broker_sends_is_documented() -> None:
    sources = [path.read_text(encoding="utf-8") for path in (ROOT / "broker").rglob("*.py")
               if "jetstream" not in path.parts]
    assert any('code=f"bad_{kind}"' in source for source in sources)  # BUILT_CODES' origin
    codes = {code for source in sources for code in CODE_SITES.findall(source)} | BUILT_CODES
    assert len(codes) > 20  # the sites are still found: the pattern has not gone stale
    assert sorted(code for code in codes if f"`{code}`" not in DOCUMENT) == []
