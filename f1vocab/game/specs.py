"""Every packet format slipstream knows, by its number (the header's `packet_format`)."""

from __future__ import annotations

from f1vocab.game import spec_2024, spec_2025, spec_2026
from f1vocab.game.layout import Spec

SPECS: dict[int, Spec] = {spec.packet_format: spec for spec in
                          (spec_2024.SPEC, spec_2025.SPEC, spec_2026.SPEC)}
