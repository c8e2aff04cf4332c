"""The coverage map (tests/coverage_map.py) holds: every knob some preset sets is active in a
golden case, in one of that preset's own cases too, and docs/coverage.md is the map as the
presets and the store make it now, so the document can never claim coverage that is gone.

The map is built from the configs stored in the cases' case.json, so a case generator that
stopped carrying a knob, or a preset that gained one the store was never regenerated for,
fails here; the last tests build such maps and check that the checks name the knob.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lmref.spec.presets import PRESETS
from tests.coverage_map import REGENERATE, build, current_document, stored_case_configs, uncovered, uncovered_per_preset

DOC = Path(__file__).resolve().parents[1] / "docs" / "coverage.md"
CASES = stored_case_configs()


def test_every_knob_a_preset_sets_is_active_in_some_golden_case():
    missing = uncovered(build(PRESETS, CASES))
    assert missing == [], f"knobs some preset sets that no golden case has active: {missing}"


def test_every_knob_a_preset_sets_is_active_in_its_own_golden_cases():
    missing = uncovered_per_preset(build(PRESETS, CASES))
    assert missing == [], f"presets whose own golden cases lack a knob they set: {missing}"


def test_docs_coverage_md_is_the_current_map():
    assert DOC.read_text() == current_document(), f"docs/coverage.md is out of date: {REGENERATE}"


# Switching a knob off in the stored configs of every case that has it: the map must then
# report the knob as set by a preset and active in no case.
KNOBS_OFF = [
    ("rope_layout=interleaved", dict(rope_layout="halves")),
    ("qkv_clip", dict(qkv_clip=None)),
    ("tie_embeddings=True", dict(tie_embeddings=False)),
]


@pytest.mark.parametrize("knob, off", KNOBS_OFF, ids=[k for k, _ in KNOBS_OFF])
def test_a_knob_switched_off_in_every_case_is_reported(knob, off):
    field = next(iter(off))
    cases = {case: dataclasses.replace(c, **off) if getattr(c, field) != off[field] else c for case, c in CASES.items()}
    rows = build(PRESETS, cases)
    assert knob in uncovered(rows)
    presets = next(r.presets for r in rows if r.knob == knob)
    assert presets and {f"{p}: {knob}" for p in presets} <= set(uncovered_per_preset(rows))


def test_a_preset_with_a_knob_no_case_has_is_reported():
    """A new preset whose golden cases were never generated, setting a knob no case has (ReLU
    today: docs/coverage.md, "Only in the property tests")."""
    relu = dataclasses.replace(PRESETS["gpt2"], name="relu-model", activation="relu")
    rows = build(PRESETS | {"relu-model": relu}, CASES)
    assert set(uncovered(rows)) - set(uncovered(build(PRESETS, CASES))) == {"activation=relu"}
    assert "relu-model: activation=relu" in uncovered_per_preset(rows)
