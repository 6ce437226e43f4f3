"""Turning a specification's struct tables into fast decoders.

A packet's whole layout, nested structs and arrays included, is flattened
into one precompiled little-endian `struct.Struct`, so a datagram is unpacked
by one C call; a small plan then rebuilds the nested dicts and lists (per-car
arrays stay arrays indexed like the game's car index). The event packet's
details are a union: its bytes are kept and decoded by event code.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

Field = tuple[str, str, tuple[int, ...]]  # name, type, array dimensions ((), (4,), (50, 22))

PRIMITIVES = {"uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I",
              "int32": "i", "uint": "I", "uint64": "Q", "int64": "q", "float": "f",
              "double": "d"}
UNION = "EventDataDetails"


@dataclass(frozen=True)
class Spec:
    """One packet format: its structs, event details and packet ids (see spec_*.py)."""

    packet_format: int
    max_cars: int
    structs: dict[str, list[Field]]
    event_details: dict[str, list[Field]]
    event_codes: dict[str, str]
    packet_ids: dict[int, str]


def topic_name(packet_name: str) -> str:
    """'CarTelemetry2' -> 'car_telemetry_2': the part after `game.` in the topic."""
    return re.sub(r"(?<=[a-z])(?=[A-Z0-9])", "_", packet_name).lower()


# A plan step: (kind, name, count, detail) - see Layout._build.
Step = tuple[str, str, int, Any]


@dataclass
class Layout:
    """One struct, compiled: its flat format, its size and the plan that rebuilds it."""

    name: str
    fmt: str = ""
    plan: list[Step] = field(default_factory=list)

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.fmt)

    def compile(self) -> struct.Struct:
        return struct.Struct("<" + self.fmt)

    def build(self, values: tuple[Any, ...], start: int = 0) -> tuple[dict[str, Any], int]:
        """Rebuild the nested data from the flat `values`, from index `start`."""
        result: dict[str, Any] = {}
        index = start
        for kind, name, count, detail in self.plan:
            if kind == "value":
                result[name] = values[index]
                index += 1
            elif kind == "array":
                flat = list(values[index:index + count])
                index += count
                result[name] = _reshape(flat, detail) if len(detail) > 1 else flat
            elif kind == "text":
                raw: bytes = values[index]
                result[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
                index += 1
            elif kind == "union":
                result[name] = values[index]  # raw bytes: decoded by the event code
                index += 1
            else:  # "struct": `count` nested records of layout `detail`
                items = []
                for _ in range(count):
                    item, index = detail.build(values, index)
                    items.append(item)
                result[name] = items if kind == "structs" else items[0]
        return result, index


    def flatten(self, data: dict[str, Any], out: list[Any]) -> list[Any]:
        """The inverse of build: nested data -> the flat values, appended to `out`."""
        for kind, name, _, detail in self.plan:
            value = data[name]
            if kind == "value" or kind == "union":
                out.append(value)
            elif kind == "array":
                out.extend(item for row in value for item in row) if len(detail) > 1 \
                    else out.extend(value)
            elif kind == "text":
                out.append(value.encode())
            else:
                for item in value if kind == "structs" else [value]:
                    detail.flatten(item, out)
        return out

    def blank(self) -> dict[str, Any]:
        """A record of zeros (empty texts, zero-filled union): to fill in and encode."""
        record: dict[str, Any] = {}
        for kind, name, count, detail in self.plan:
            if kind == "value":
                record[name] = 0
            elif kind == "array":
                zeros = [0] * count
                record[name] = _reshape(zeros, detail) if len(detail) > 1 else zeros
            elif kind == "text":
                record[name] = ""
            elif kind == "union":
                record[name] = b""
            else:
                items = [detail.blank() for _ in range(count)]
                record[name] = items if kind == "structs" else items[0]
        return record


def _reshape(flat: list[Any], dims: tuple[int, ...]) -> list[Any]:
    step = len(flat) // dims[0]
    return [flat[i * step:(i + 1) * step] for i in range(dims[0])]


def compile_layout(spec: Spec, name: str, fields: list[Field] | None = None) -> Layout:
    """The compiled layout of struct `name` (or of the given fields)."""
    layout = Layout(name)
    fields = fields if fields is not None else spec.structs[name]
    names = [field[0] for field in fields]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        # A repeated name would silently overwrite the earlier field in every decoded packet.
        raise ValueError(f"struct {name} names {', '.join(map(repr, repeated))} more than once")
    for field_name, type_name, dims in fields:
        count = 1
        for size in dims:
            count *= size
        if type_name == "char":
            layout.fmt += f"{count}s"
            layout.plan.append(("text", field_name, 1, None))
        elif type_name in PRIMITIVES:
            layout.fmt += PRIMITIVES[type_name] * count
            layout.plan.append(("array" if dims else "value", field_name, count, dims))
        elif type_name == UNION:
            size = max(compile_layout(spec, member, member_fields).size
                       for member, member_fields in spec.event_details.items())
            layout.fmt += f"{size}s"
            layout.plan.append(("union", field_name, 1, None))
        elif type_name in spec.structs:
            nested = compile_layout(spec, type_name)
            layout.fmt += nested.fmt * count
            layout.plan.append(("structs" if dims else "struct", field_name, count, nested))
        else:
            raise ValueError(f"format {spec.packet_format}: {name}.{field_name} has unknown "
                             f"type {type_name!r}")
    return layout
