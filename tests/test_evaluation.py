"""APGR, CPT and calibration on hand-checked cases."""

import numpy as np
import pytest

from routers.calibration import threshold_for_share
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


def test_cpt_interpolates_to_the_target_gap():
    assert cpt([0.9, 0.8, 0.2, 0.1], QUALITY, 0.5) == pytest.approx(0.25)
    assert cpt([0.9, 0.8, 0.2, 0.1], QUALITY, 1.0) == pytest.approx(0.5)


def test_threshold_for_share_sends_that_share():
    scores = np.linspace(0, 0.99, 1000)
    threshold = threshold_for_share(scores, 0.3)
    assert (scores >= threshold).mean() == pytest.approx(0.3)
    assert (scores >= threshold_for_share(scores, 0.0)).mean() == 0
