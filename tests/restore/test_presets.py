"""Restoration presets: per-noise entries, the nearest one in log noise, fallbacks, and the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest
from restore.presets import FALLBACK, PresetError, parse_tau, preset_for, read_presets

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return path


def test_tagged_entries_pick_the_nearest_noise_on_a_log_scale(tmp_path):
    presets = read_presets(_write(tmp_path, "blur:\n"
                                            "  - {noise: 2.55, gamma: 5}\n"
                                            "  - {noise: 7.65, gamma: 20, tau: '1.0:0.8'}\n"
                                            "  - {noise: 12.75, gamma: 40, iterations: 15}\n"))
    assert preset_for(presets, "blur", 2.55)["gamma"] == 5
    assert preset_for(presets, "blur", 4.0)["gamma"] == 5  # log(4/2.55) = 0.45 < log(7.65/4) = 0.65
    assert preset_for(presets, "blur", 5.0)["gamma"] == 20
    assert preset_for(presets, "blur", 100.0)["gamma"] == 40
    mid = preset_for(presets, "blur", 7.65)
    assert mid["tau"] == "1.0:0.8" and parse_tau(mid["tau"]) == (1.0, 0.8)
    assert mid["iterations"] == FALLBACK["iterations"]  # a field left out comes from the fallback
    assert "noise" not in mid


def test_untagged_section_applies_at_every_noise_and_missing_operator_falls_back(tmp_path):
    presets = read_presets(_write(tmp_path, "denoise: {gamma: 20, tau: 1.0, iterations: 20, return: decoded}\n"))
    assert preset_for(presets, "denoise", 1.0) == preset_for(presets, "denoise", 50.0)
    assert preset_for(presets, "denoise", 25.0) == {"gamma": 20, "tau": "1.0", "iterations": 20, "return": "decoded"}
    assert preset_for(presets, "sr", 3.0) == {**FALLBACK, "tau": str(FALLBACK["tau"])}


def test_sr_entries_tagged_with_a_factor_are_chosen_by_factor_then_noise(tmp_path):
    presets = read_presets(_write(tmp_path, "sr:\n"
                                  "  - {noise: 2.55, factor: 2, gamma: 20}\n"
                                  "  - {noise: 2.55, factor: 4, gamma: 30}\n"
                                  "  - {noise: 12.75, factor: 4, gamma: 40}\n"))
    assert preset_for(presets, "sr", 2.55, 2)["gamma"] == 20
    assert preset_for(presets, "sr", 12.75, 2)["gamma"] == 20  # the factor first: no x2 entry at 12.75
    assert preset_for(presets, "sr", 2.55, 4)["gamma"] == 30
    assert preset_for(presets, "sr", 10.0, 4)["gamma"] == 40
    assert preset_for(presets, "sr", 2.55, 8)["gamma"] == 30  # nearest factor on a log scale
    assert preset_for(presets, "sr", 2.55, 3)["gamma"] == 30  # log(4/3) = 0.29 < log(3/2) = 0.41
    assert "factor" not in preset_for(presets, "sr", 2.55, 4)
    assert preset_for(presets, "sr", 12.75)["gamma"] == 40  # no factor given: noise only


@pytest.mark.parametrize("text, says", [
    ("blur: [{gamma: 5}]\n", "needs 'noise'"),
    ("blur: [{noise: -1, gamma: 5}]\n", "needs 'noise'"),
    ("blur: []\n", "empty list"),
    ("blur: {noise: 3, gamma: 5}\n", "must map some of"),  # a tag only inside a list
    ("blur: {gamma: 0}\n", "gamma must be"),
    ("blur: {iterations: 2.5}\n", "iterations must be"),
    ("blur: {return: z}\n", "return must be"),
    ("blur: {tau: '1:0.5:0'}\n", "not a number"),
    ("sr: [{noise: 3, factor: 1.5, gamma: 5}]\n", "factor must be"),
    ("blur: [{noise: 3, factor: 2, gamma: 5}]\n", "must map some of"),  # factor tags only sr entries
    ("- blur\n", "must map some of"),
    ("blur: {gamma: [1\n", "cannot read preset"),
])
def test_malformed_presets_are_refused_with_one_line(tmp_path, text, says):
    with pytest.raises(PresetError, match=says.replace("'", ".")) as err:
        read_presets(_write(tmp_path, text))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["natural.yaml", "natural_grey.yaml", "faces.yaml"])
def test_shipped_presets_are_valid_and_cover_every_operator(name):
    presets = read_presets(ROOT / "configs" / "restore" / name)
    for operator in ("blur", "denoise", "sr", "inpaint"):
        assert operator in presets
        for noise in (1.0, 2.55, 7.65, 12.75, 25.0, 50.0):
            for factor in ((None, 2, 3, 4, 8) if operator == "sr" else (None,)):
                setting = preset_for(presets, operator, noise, factor)
                parse_tau(setting["tau"])


def test_restore_cli_uses_the_sr_entry_of_its_scale():
    """restore.py --operator sr passes --scale to the preset: the shipped natural preset has x2 and x4 entries."""
    from restore.cli import apply_preset, build_parser

    presets = read_presets(ROOT / "configs" / "restore" / "natural.yaml")
    for scale in (2, 4):
        args = build_parser().parse_args(["--clean", "x.png", "--operator", "sr", "--scale", str(scale),
                                          "--noise-std", "2.55"])
        apply_preset(args)
        expected = preset_for(presets, "sr", 2.55, scale)
        assert (args.gamma, args.tau, args.return_estimate) == (expected["gamma"], expected["tau"], expected["return"])
    assert preset_for(presets, "sr", 2.55, 2) != preset_for(presets, "sr", 2.55, 4)


def test_grey_preset_differs_from_the_colour_one_only_where_it_was_retuned():
    """configs/restore/natural_grey.yaml: natural.yaml with the blur entries at 7.65 and 12.75 re-tuned on grey
    validation crops; every other setting the colour one (so a re-tuned colour preset must be copied over)."""
    colour = read_presets(ROOT / "configs" / "restore" / "natural.yaml")
    grey = read_presets(ROOT / "configs" / "restore" / "natural_grey.yaml")
    assert {k: v for k, v in colour.items() if k != "blur"} == {k: v for k, v in grey.items() if k != "blur"}
    assert preset_for(grey, "blur", 2.55) == preset_for(colour, "blur", 2.55)
    for noise in (7.65, 12.75):
        assert preset_for(grey, "blur", noise) != preset_for(colour, "blur", noise)
