"""analysis/compare.calibrate_members where the bootstrap collapsed onto the point on a side (no spread there): that
side is set to the distance model's floor, so neither side of a recipe's interval is narrower than the distance model
allows, and the comparison says so (text and JSON)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from proxyscale.analysis.compare import Recipe, Target, calibrate_members, compare_at, fit_recipes, recipe_path
from proxyscale.analysis.laws import chinchilla_loss
from proxyscale.analysis.predictive import MIN_MEMBERS, Calibration, DistanceModel

SIZES = np.geomspace(2e6, 6e7, 5)
MULTIPLIERS = (5, 10, 20, 40, 80)
LAW = dict(E=1.8, A=400.0, B=600.0, alpha=0.30, beta=0.30)
FLOORLESS = dict(E=0.0, A=40.0, B=60.0, alpha=0.2, beta=0.2)
"""A law with no floor: fitted on noise-free runs, E sits at its bound 0 in every member and every member is the point."""


def ladder(law: dict, *, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of a known law on 5 sizes x 5 tokens per parameter (noise: the sd of a multiplicative noise)."""
    n = np.repeat(SIZES, len(MULTIPLIERS))
    d = np.tile(MULTIPLIERS, len(SIZES)) * n
    rng = np.random.default_rng(seed)
    return n, d, chinchilla_loss(n, d, **law) * np.exp(rng.normal(0, noise, len(n)))


def calibration_with_distance() -> tuple[Calibration, DistanceModel]:
    model = DistanceModel(noise=0.004, growth=0.05, measured_growth=float("nan"), units=0, source="prior",
                          n_max=1e8, span=float(np.log(30.0)))
    return dataclasses.replace(Calibration.none("set by hand"), distance=model), model


def test_a_side_with_no_spread_is_set_to_the_distance_floor():
    calibration, model = calibration_with_distance()
    n = np.array([1e8, 1e9, 1e10])  # inside the ladder (floor 0), then 10x and 100x past it
    floor = np.asarray(model.half_width(model.distance_of(n), noise=False))
    assert floor[0] == 0 and floor[1] > 0.01 and floor[2] > floor[1]
    point = np.log(np.array([3.0, 2.5, 2.2]))
    rng = np.random.default_rng(0)
    above = np.abs(rng.normal(0, 0.02, (200, 3)))
    above[:20] = 0.0  # a tenth of the members sit on the point: the bootstrap's 2.5% percentile is the point
    for sign in (1.0, -1.0):  # every member above the point (a band collapsed below it), then every one below
        members = point + sign * above
        before = np.percentile(members - point, [2.5, 97.5], axis=0)
        calibrated = calibrate_members(calibration, point, members, n)
        low, high = np.percentile(calibrated - point, [2.5, 97.5], axis=0)
        collapsed, kept = (0, 1) if sign > 0 else (1, 0)
        assert np.all(np.abs(before[collapsed]) < 1e-12)  # the bootstrap: no spread on that side at all
        # after: at least the floor on BOTH sides at every distance past the ladder
        assert np.all(-low[1:] >= floor[1:] * (1 - 1e-9)), (low, floor)
        assert np.all(high[1:] >= floor[1:] * (1 - 1e-9)), (high, floor)
        # the side with spread keeps its own (here wider than the floor at 10x), as before
        other = (high if sign > 0 else -low)
        assert np.all(other[1:] >= np.maximum(np.abs(before[kept][1:]), floor[1:]) * (1 - 1e-9))
        # inside the ladder the floor is 0: the member band is left as the bootstrap gave it
        np.testing.assert_allclose(calibrated[:, 0], members[:, 0])
        # the members keep their order at each point (pairing stays meaningful): ranks are those of the bootstrap
        for g in (1, 2):
            order = np.argsort(members[:, g], kind="stable")
            assert np.all(np.diff(calibrated[order, g]) >= -1e-15)
    # a bootstrap with no spread at all (every member the point): both sides set to the floor
    flat = np.repeat(point[None], 100, axis=0)
    low, high = np.percentile(calibrate_members(calibration, point, flat, n) - point, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(-low[1:], floor[1:], rtol=1e-9)
    np.testing.assert_allclose(high[1:], floor[1:], rtol=1e-9)


def test_a_recipe_with_e_at_its_bound_gets_the_floor_and_the_flag(tmp_path, capsys):
    import proxyscale
    from proxyscale.orchestrator.cli import main

    # "z": noise-free runs of a law with no floor: E is at 0 in every member and every member is the point, so the
    # bootstrap's interval at the target has zero width on both sides; "a" is an ordinary noisy recipe.
    runs = {"a": ladder(LAW, noise=0.005, seed=1), "z": ladder(FLOORLESS, noise=0.0)}
    table = pd.concat([pd.DataFrame({"recipe": name, "N": n, "D": d, "L": loss}) for name, (n, d, loss) in runs.items()])
    result = proxyscale.compare(table, by="recipe", n="N", d="D", loss="L", target_flops=1e21, bootstrap=MIN_MEMBERS,
                                share="none")
    fits = result.fits
    z = fits.law_of("z")
    assert np.all(np.exp(z.members[:, 2]) < 0.05 * z.recipe.loss.min())  # E at its bound in every member
    target = Target(flops=1e21)
    model = z.calibration.distance
    path = recipe_path(fits, "z", [target.compute], target)
    n_target = float(path.n_point[0])
    floor = float(model.half_width(model.distance_of(n_target, target.compute / (6 * n_target)), noise=False))
    assert floor > 0.01  # far past the ladder: the distance model asks for more than 1%
    group = next(g for g in result.groups if g.name == "z")
    # the floor holds exactly on the members' log percentiles (as calibrate_members sets every side); the interval's
    # percentiles are taken on the loss, where interpolating between two members reads a hair nearer the point
    assert np.log(group.loss.value / group.loss.low) >= floor * (1 - 1e-3), (group.loss, floor)
    assert np.log(group.loss.high / group.loss.value) >= floor * (1 - 1e-3), (group.loss, floor)
    log_members = np.log(path.loss_members[:, 0] / path.loss_point[0])
    low, high = np.percentile(log_members, [2.5, 97.5])
    assert -low >= floor * (1 - 1e-9) and high >= floor * (1 - 1e-9), (low, high, floor)
    text = "\n".join(result.lines())
    assert "z: the bootstrap collapsed onto the point on both sides" in text and "E at its bound" in text
    assert f"+-{floor:.2%}" in text
    payload = result.to_dict()
    flags = {f["recipe"]: f for f in payload["collapsed"]}
    assert set(flags) == {"z"} and flags["z"]["sides"] == ["below", "above"]
    assert abs(flags["z"]["floor"] - floor) < 1e-9 and flags["z"]["e_at_bound"] == 1.0
    json.dumps(payload)
    # the command prints the same flag (text) and carries it in --json
    csv = tmp_path / "recipes.csv"
    table.to_csv(csv, index=False)
    command = ["compare", "--csv", str(csv), "--by", "recipe", "--n", "N", "--d", "D", "--loss", "L", "--target-flops",
               "1e21", "--bootstrap", str(MIN_MEMBERS), "--share", "none"]
    assert main(command) == 0
    assert "flag: recipe z: the bootstrap collapsed onto the point on both sides" in capsys.readouterr().out
    assert main([*command, "--json"]) == 0
    assert [f["recipe"] for f in json.loads(capsys.readouterr().out)["collapsed"]] == ["z"]
    # the noisy recipe's interval is its own; the pair is still decided from members with spread on both sides
    assert "a: the bootstrap collapsed" not in text
    assert 0.0 <= result.pairs[0].p_a_lower <= 1.0
    # Two such recipes 1.2% apart at the target: before, both had zero width and P(z lower) read 1.00; each is now
    # spread to its own floor (about +-9%), independently (nothing says they co-vary), so the pair is no clear call.
    close = dict(FLOORLESS, A=41.0)
    pair = compare_at(fit_recipes([Recipe.of("z", *ladder(FLOORLESS, noise=0.0)),
                                   Recipe.of("z2", *ladder(close, noise=0.0))], bootstrap=MIN_MEMBERS, share="none"),
                      target)
    assert 0.1 < pair.pairs[0].p_a_lower < 0.9 and pair.pairs[0].verdict == "no clear winner", pair.pairs[0]
    assert pair.pairs[0].difference.low < 0 < pair.pairs[0].difference.high
    assert {f.recipe for f in pair.collapsed} == {"z", "z2"}
