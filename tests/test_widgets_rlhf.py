"""Lab 07 widgets, headless: the annotator records A/B clicks and its agreement readout; the
live PPO curves grow in place; bad input raises LabkitError."""

from __future__ import annotations

import pytest

from labkit.align.reward import annotation_batch
from labkit.errors import LabkitError
from labkit.loaders import load_records
from widgets.rlhf import LiveCurves, PreferenceAnnotator


@pytest.fixture(scope="module")
def batch():
    return annotation_batch(load_records("preferences"), k=3, seed=1234)


def test_annotator_walks_the_pairs_and_scores_agreement(batch):
    annotator = PreferenceAnnotator(batch)
    assert "Pair 1 of 3" in annotator.pair.value and "no pair labelled" in annotator.readout.value
    assert batch[0]["prompt"].split()[0] in annotator.pair.value
    annotator.button_a.click() if batch[0]["shipped"] == "A" else annotator.button_b.click()
    wrong = "B" if batch[1]["shipped"] == "A" else "A"
    annotator.choose(wrong)
    assert "Pair 3 of 3" in annotator.pair.value
    assert "you labelled 2 of 3 pairs" in annotator.readout.value
    assert "agree with the shipped labels on 1 (50%)" in annotator.readout.value
    table = annotator.agreement()
    assert list(table["agree"]) == [True, False, None]
    annotator.choose(batch[2]["shipped"])
    assert annotator.button_a.disabled and annotator.button_b.disabled
    assert "All pairs labelled" in annotator.pair.value
    annotator.choose("A")  # after the last pair: ignored
    assert annotator.labels == [batch[0]["shipped"], wrong, batch[2]["shipped"]]


def test_annotator_rejects_bad_input(batch):
    with pytest.raises(LabkitError, match="empty"):
        PreferenceAnnotator([])
    with pytest.raises(LabkitError, match="lacks"):
        PreferenceAnnotator([{"prompt": "Hi?"}])
    with pytest.raises(LabkitError, match="'A' or 'B'"):
        PreferenceAnnotator(batch).choose("C")


def test_live_curves_grow_in_place():
    live = LiveCurves(["leash", "free"], true_score=True, title="live")
    figure_id = id(live.figure)
    assert len(live.figure.data) == 2 * 4
    assert live.figure.layout.title.text == "live"
    for axis in ("xaxis", "yaxis", "yaxis2", "yaxis3", "yaxis4"):
        assert live.figure.layout[axis].title.text, axis
    on_row = live.callback("free")
    for it in range(3):
        assert on_row({"iteration": it, "reward": 1.0 + it, "kl": 0.5 * it,
                       "response_tokens": 8, "true_score": 0.9 - 0.1 * it}) is False
    assert id(live.figure) == figure_id
    assert list(live.trace("free", "reward").y) == [1.0, 2.0, 3.0]
    assert list(live.trace("free", "true_score").x) == [0, 1, 2]
    assert len(live.trace("leash", "reward").y) == 0
    with pytest.raises(LabkitError, match="unknown run"):
        live.add("other", {"iteration": 0})
    with pytest.raises(LabkitError, match="distinct"):
        LiveCurves(["a", "a"])
