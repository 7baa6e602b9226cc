"""The coordinate check separates sp from mup (width) and completep from mup (depth).

Thresholds come from measurements (widths 32..256, depth 2, 5 Adam steps at LR 1e-2; seeds 0 and 1):
slope of log mean|activation| against log width at the last step:
  sp:  hidden layers 1.45 .. 1.99, logits 0.59 .. 0.72
  mup: every layer within -0.24 .. 0.27
slope against log depth (depths 2..16, width 64) of the deepest block's output:
  mup 0.86, completep -0.20.
"""

from __future__ import annotations

import numpy as np
import pytest

from proxyscale.analysis.plots import plot_coord_check
from proxyscale.models.coord_check import coord_check

WIDTHS = [32, 64, 128, 256]
LAYERS = ["embedding", "block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "block1.out", "logits"]


def slope(records, layer, axis):
    last = max(r["step"] for r in records)
    points = sorted((r[axis], r["l1"]) for r in records if r["layer"] == layer and r["step"] == last)
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


@pytest.fixture(scope="module")
def width_records():
    return {p: coord_check(parametrization=p, widths=WIDTHS, steps=5, lr=1e-2) for p in ("sp", "mup", "completep")}


def test_mup_activations_are_flat_in_width(width_records):
    for parametrization in ("mup", "completep"):
        slopes = {layer: slope(width_records[parametrization], layer, "width") for layer in LAYERS}
        assert all(abs(s) < 0.4 for s in slopes.values()), (parametrization, slopes)


def test_sp_logits_and_hidden_activations_grow_with_width(width_records):
    slopes = {layer: slope(width_records["sp"], layer, "width") for layer in LAYERS}
    assert slopes["logits"] > 0.4, slopes
    assert slopes["block1.out"] > 1.0, slopes


def test_completep_is_flat_in_depth_where_mup_is_not():
    depths = [2, 4, 8, 16]
    mup = coord_check(parametrization="mup", widths=[64], depths=depths, steps=5)
    completep = coord_check(parametrization="completep", widths=[64], depths=depths, steps=5)
    assert slope(mup, "last_block", "depth") > 0.6
    assert abs(slope(completep, "last_block", "depth")) < 0.4
    assert abs(slope(completep, "logits", "depth")) < 0.4


def test_coord_check_plot_is_saved(width_records, tmp_path):
    path = plot_coord_check(width_records["sp"] + width_records["mup"], tmp_path / "coord.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
