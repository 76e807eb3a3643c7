from __future__ import annotations

import json

import pytest

from agrnet.cli import main


def test_profile_resnet101_json_matches_design_notes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--backbone", "resnet101", "--image-size", "473", "--num-classes", "11", "--json"]) == 0
    parts = json.loads(capsys.readouterr().out)["parts"]
    # DESIGN-NOTES §10: backbone 42.5M / 155.7 GMACs, PSP 23.1M / 68 GMACs, edge 0.465M / 2.44 GMACs,
    # full model ~66.5M (66.4M without the reference code's unused modules).
    assert parts["backbone"]["params"] / 1e6 == pytest.approx(42.5, abs=0.1)
    assert parts["backbone"]["macs"] / 1e9 == pytest.approx(155.7, abs=0.5)
    assert parts["context"]["macs"] / 1e9 == pytest.approx(68.0, abs=0.5)
    assert parts["edge"]["params"] / 1e6 == pytest.approx(0.465, abs=0.005)
    assert parts["total"]["params"] / 1e6 == pytest.approx(66.4, abs=0.3)
    assert sum(row["params"] for name, row in parts.items() if name != "total") == parts["total"]["params"]


def test_profile_baseline_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--backbone", "resnet18", "--image-size", "97", "--variant", "baseline"]) == 0
    text = capsys.readouterr().out
    assert "backbone" in text and "total" in text
