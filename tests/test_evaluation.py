"""APGR, CPT and calibration on hand-checked cases."""

import numpy as np
import pytest

from routers.calibration import threshold_for_share
from routers.evaluation.categories import category_table, percentiles, rank_correlation, ranks
from routers.evaluation.metrics import PairQuality, apgr, cpt, routing_curve

QUALITY = PairQuality.of(strong=[1, 1, 1, 0], weak=[0, 0, 1, 0])  # strong helps on the first two only


def test_routing_curve_cuts_between_distinct_scores_only():
    shares, means = routing_curve([0.9, 0.9, 0.2, 0.1], QUALITY)
    assert shares.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert means.tolist() == pytest.approx([0.25, 0.75, 0.75, 0.75])


def test_apgr_of_a_perfect_and_of_an_inverted_router():
    assert apgr([0.9, 0.8, 0.2, 0.1], QUALITY) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert apgr([0.1, 0.2, 0.8, 0.9], QUALITY) == pytest.approx(0.5 * 0.5)


def test_random_router_apgr_is_about_one_half():
    rng = np.random.default_rng(0)
    quality = PairQuality.of(rng.random(5000) < 0.8, rng.random(5000) < 0.6)
    assert apgr(rng.random(5000), quality) == pytest.approx(0.5, abs=0.05)


def test_apgr_and_cpt_are_undefined_when_the_strong_model_does_not_lead():
    even = PairQuality.of(strong=[1, 0, 1, 0], weak=[0, 1, 0, 1])
    assert np.isnan(apgr([0.9, 0.8, 0.2, 0.1], even))
    assert np.isnan(cpt([0.9, 0.8, 0.2, 0.1], even, 0.5))
    behind = PairQuality.of(strong=[0, 0, 1, 0], weak=[1, 1, 1, 0])
    assert np.isnan(apgr([0.9, 0.8, 0.2, 0.1], behind))


def test_a_lead_is_separable_only_beyond_two_standard_errors():
    clear = PairQuality.of(strong=[1] * 30 + [0] * 70, weak=[0] * 100)  # lead 0.3, about 6.5 standard errors
    assert clear.gap == pytest.approx(0.3)
    assert clear.gap_z == pytest.approx(0.3 / (np.std([1] * 30 + [0] * 70, ddof=1) / 10))
    assert clear.separable
    within_noise = PairQuality.of(strong=[1] * 51 + [0] * 49, weak=[0] * 51 + [1] * 49)  # lead 0.02, 0.2 errors
    assert within_noise.gap == pytest.approx(0.02)
    assert 0 < within_noise.gap_z < 1
    assert not within_noise.separable
    assert PairQuality.of(strong=[1, 1, 1], weak=[0, 0, 0]).separable  # the same lead on every prompt: no noise
    assert not PairQuality.of(strong=[1], weak=[0]).separable  # one prompt says nothing about noise


def test_cpt_interpolates_to_the_target_gap():
    assert cpt([0.9, 0.8, 0.2, 0.1], QUALITY, 0.5) == pytest.approx(0.25)
    assert cpt([0.9, 0.8, 0.2, 0.1], QUALITY, 1.0) == pytest.approx(0.5)


def test_cpt_counts_a_share_whose_pgr_is_exactly_the_target():
    """PGR comes from a running sum: with 0/1 scores it often lands exactly on the target, and a
    rounding error below it must not move CPT to a later crossing."""
    quality = PairQuality.of(strong=[1, 1, 1, 0, 1, 1, 1, 1], weak=[0, 1, 0, 1, 1, 1, 0, 1])  # gains 1 0 1 -1 0 0 1 0
    descending = np.linspace(0.9, 0.2, 8)
    assert cpt(descending, quality, 0.5) == pytest.approx(1 / 8)  # PGR 0.5 at 1/8 (and 3/8), then 1.0 at 3/8
    assert cpt(descending, quality, 1.0) == pytest.approx(3 / 8)
    assert cpt(descending, quality, 0.75) == pytest.approx(2.5 / 8)  # between cuts: interpolated
    rounded = PairQuality.of(strong=[0, 1, 1, 1, 1, 1, 1, 1, 1], weak=[1, 1, 1, 1, 0, 1, 0, 1, 0])  # PGR 0.5 at 7/9
    assert cpt(np.linspace(0.9, 0.1, 9), rounded, 0.5) == pytest.approx(7 / 9)  # computed as 0.5 - 1e-16 there


def test_threshold_for_share_sends_that_share():
    scores = np.linspace(0, 0.99, 1000)
    threshold = threshold_for_share(scores, 0.3)
    assert (scores >= threshold).mean() == pytest.approx(0.3)
    assert (scores >= threshold_for_share(scores, 0.0)).mean() == 0


def test_ranks_share_ties_and_percentiles_run_from_zero_to_one():
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert percentiles([10.0, 30.0, 20.0]).tolist() == [0.0, 1.0, 0.5]
    assert rank_correlation([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation([1, 2, 3], [5, 5, 5]))


def test_category_table_orders_by_lead_and_shows_where_each_router_ranks_a_category():
    # the strong model leads on "proof" (+1), less on "sum" (+0.5) and the uncategorised prompt, never on "poem"
    categories = ["proof", "proof", "sum", "sum", "poem", "poem", None]
    quality = PairQuality.of(strong=[1, 1, 1, 0, 1, 0, 1], weak=[0, 0, 0, 0, 1, 0, 0.75])
    curves = {"right": [7, 6, 5, 4, 2, 1, 3], "inverted": [1, 2, 3, 4, 6, 7, 5]}
    lines = category_table(categories, quality, curves).splitlines()
    assert lines[0].split()[-2:] == ["right,", "inverted"]
    assert [line.split() for line in lines[1:5]] == [
        ["proof", "2", "+1.000", "0.92", "0.08"],
        ["sum", "2", "+0.500", "0.58", "0.42"],
        ["(none)", "1", "+0.250", "0.33", "0.67"],
        ["poem", "2", "+0.000", "0.08", "0.92"],
    ]
    assert lines[5].endswith("right: rank correlation of category means with their lead +1.00")
    assert lines[6].endswith("inverted: rank correlation of category means with their lead -1.00")


def test_category_table_keeps_categories_of_other_json_types_apart_on_one_line_each():
    categories = [1, "1", "a\nb", None, {"k": 1}, 1]
    quality = PairQuality.of(strong=[1, 0.8, 0.6, 0.4, 0.2, 1], weak=[0] * 6)
    lines = category_table(categories, quality, {"length": [1, 2, 3, 4, 5, 6]}).splitlines()
    assert [line.split()[:3] for line in lines[1:6]] == [
        ["1", "2", "+1.000"],
        ["1", "1", "+0.800"],
        ["a\\nb", "1", "+0.600"],
        ["(none)", "1", "+0.400"],
        ['{"k":', "1}", "1"],
    ]
