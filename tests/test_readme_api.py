"""The README's Python API block, run as written (from a folder that sees the repository's priors/)."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from data.images import read_image

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_block_runs_and_restores(tmp_path):
    blocks = re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.M | re.S)
    assert len(blocks) == 1, "the README has one Python block: the API example"
    (tmp_path / "priors").symlink_to(ROOT / "priors")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PnP-HVAE"))
    hvae, wiener = (ast.literal_eval(v) for v in re.findall(r"\[[^\]]*\]", line))
    assert len(hvae) == len(wiener) == 2 and all(h > w for h, w in zip(hvae, wiener)), line  # both images
    assert read_image(tmp_path / "out" / "api" / "restored.png").shape == (3, 96, 96)
    assert read_image(tmp_path / "out" / "api" / "big.png").shape == (3, 160, 224)
    assert not (tmp_path / "out" / "api" / "tiles").exists()  # tile files removed after assembly
