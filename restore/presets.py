"""Restoration presets: the JPMAP settings restore.py and the benchmarks use per operator and noise level.

A preset file is YAML mapping an operator (``blur``, ``denoise``, ``sr``, ``inpaint``, ``demosaic``) to either one setting
(valid at every noise level) or a list of settings each tagged with the noise std it was tuned at::

    denoise: {gamma: 20, tau: 1.0, iterations: 20, return: decoded}
    blur:
      - {noise: 2.55, gamma: 10, tau: 0.9, iterations: 30, return: decoded}
      - {noise: 7.65, gamma: 20, tau: 0.9, iterations: 30, return: decoded}

gamma and noise are on the 0-255 scale; tau is one value, a comma list (one per latent group) or START:END
(linear from the top group to the bottom one); return is ``x`` (x_K) or ``decoded`` (G(z_K)). For a list,
the entry whose noise is nearest to the observation's on a log scale applies. Entries of ``sr`` may also be
tagged with the ``factor`` they were tuned at; the factor nearest on a log scale is chosen first, then the
noise (an entry without a factor tag applies to every factor)::

    sr:
      - {noise: 2.55, factor: 2, gamma: 20, tau: 1.0, iterations: 30, return: decoded}
      - {noise: 2.55, factor: 4, gamma: 20, tau: "1.0:0.8", iterations: 30, return: x}

Fields a setting leaves out come from ``FALLBACK``.
"""

from __future__ import annotations

import math
from pathlib import Path

FIELDS = ("gamma", "tau", "iterations", "return")
FALLBACK = {"gamma": 10.0, "tau": "0.8", "iterations": 50, "return": "x"}
OPERATORS = ("blur", "denoise", "sr", "inpaint", "demosaic")


class PresetError(ValueError):
    """A preset file or value is malformed; one line saying what to change."""


def parse_tau(text) -> tuple[float | tuple[float, ...], float | None]:
    """'0.9' -> (0.9, None); '0.9,0.8,...' -> (one per group, None); 'START:END' -> (START, END)."""
    text = str(text)
    try:
        if ":" in text:
            start, end = (float(v) for v in text.split(":"))
            return start, end
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PresetError(f"tau {text!r} is not a number, a comma list or START:END") from None
    return (values[0] if len(values) == 1 else values), None


def _check_entry(entry, where: str, tagged: bool, operator: str) -> None:
    allowed = set(FIELDS) | ({"noise"} if tagged else set()) | ({"factor"} if tagged and operator == "sr" else set())
    if not isinstance(entry, dict) or set(entry) - allowed:
        raise PresetError(f"{where} must map some of {sorted(allowed)}")
    if tagged:
        noise = entry.get("noise")
        if not isinstance(noise, (int, float)) or not noise > 0:
            raise PresetError(f"{where} needs 'noise': the noise std (0-255 scale, > 0) it was tuned at")
        if "factor" in entry and not (isinstance(entry["factor"], int) and entry["factor"] >= 2):
            raise PresetError(f"{where}: factor must be the integer SR factor (>= 2) it was tuned at")
    if "tau" in entry:
        parse_tau(entry["tau"])
    if "gamma" in entry and not (isinstance(entry["gamma"], (int, float)) and entry["gamma"] > 0):
        raise PresetError(f"{where}: gamma must be a number > 0 (0-255 scale)")
    if "iterations" in entry and not (isinstance(entry["iterations"], int) and entry["iterations"] >= 1):
        raise PresetError(f"{where}: iterations must be an integer >= 1")
    if "return" in entry and entry["return"] not in ("x", "decoded"):
        raise PresetError(f"{where}: return must be x or decoded")


def read_presets(path: str | Path) -> dict:
    """The checked contents of a preset file: {operator: setting or [tagged settings]}."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PresetError(f"cannot read preset {path}: {type(err).__name__}") from None
    if not isinstance(data, dict) or set(data) - set(OPERATORS):
        raise PresetError(f"preset {path} must map some of {list(OPERATORS)} to settings")
    for op, section in data.items():
        if isinstance(section, list):
            if not section:
                raise PresetError(f"preset {path}: section {op!r} is an empty list")
            for i, entry in enumerate(section):
                _check_entry(entry, f"preset {path}: {op}[{i}]", tagged=True, operator=op)
        else:
            _check_entry(section, f"preset {path}: section {op!r}", tagged=False, operator=op)
    return data


def preset_for(presets: dict, operator: str, noise255: float, factor: int | None = None) -> dict:
    """The setting for ``operator`` at noise std ``noise255`` (0-255) and SR ``factor``: FALLBACK updated by
    the preset's entry (for a tagged list, the entry nearest in log factor, then in log noise; entries without
    a factor tag are at distance 0). Returns {gamma, tau, iterations, return}."""
    values = dict(FALLBACK)
    section = presets.get(operator)
    if isinstance(section, list):
        def distance(e: dict) -> tuple[float, float]:
            far = 0.0 if factor is None or "factor" not in e else abs(math.log(e["factor"] / factor))
            return far, abs(math.log(e["noise"] / noise255))

        section = min(section, key=distance)
    values.update({k: v for k, v in (section or {}).items() if k not in ("noise", "factor")})
    values["tau"] = str(values["tau"])
    return values
