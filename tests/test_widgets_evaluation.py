"""The evaluation explorers, headless: controls move the FigureWidget data in place, a window's
sweep is computed once, bad input shows a message and raises nothing."""

from __future__ import annotations

import numpy as np
import pytest

from labkit import LabkitError, profile
from labkit.evaluation import perplexity, score_items, stride_sweep
from labkit.loaders import load_tokenizer
from labkit.models import ModelShape, build_causal_lm
from widgets.evaluation import ChoiceExplorer, StrideExplorer, stride_explorer

TEXT = (
    "The river Trim flows through Krivaford. About 1880 thousand people live in Krivaford. "
    "The city of Krivaford is in Kraiesh. Its people speak Kraieshan and pay in lumens."
)
ITEMS = [
    {"id": "q-0", "subject": "geography", "question": "Which river flows through Krivaford?",
     "choices": ["Trim", "Loubi", "the long river of the north", "Sel"], "answer": 0},
    {"id": "q-1", "subject": "geography", "question": "In which country is Krivaford?",
     "choices": ["Kraiesh", "Selgate", "Tarsk"], "answer": 0},
    {"id": "q-2", "subject": "economics", "question": "What do people in Kraiesh pay in?",
     "choices": ["lumens", "shells", "copper coins of the old kingdom"], "answer": 2},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_causal_lm(len(tokenizer), ModelShape(d_model=32, n_layer=2, n_head=2, max_len=64))


@pytest.fixture()
def counted_sweeps(model, tokenizer):
    calls = []

    def sweep_fn(window, strides):
        calls.append((window, tuple(strides)))
        return stride_sweep(model, tokenizer, TEXT, window, strides)

    return calls, sweep_fn


def test_stride_explorer_draws_labkit_sweep_and_updates_in_place(model, tokenizer, counted_sweeps):
    calls, sweep_fn = counted_sweeps
    e = StrideExplorer(windows=[16, 32], strides=[4, 8, 16, 32], window=32, stride=8,
                       sweep_fn=sweep_fn)
    for control in e.controls:
        assert "(tokens)" in control.description
    assert calls == [(32, (4, 8, 16, 32))]
    ppl, compute, chosen = e.figure.data
    expected = stride_sweep(model, tokenizer, TEXT, 32, [4, 8, 16, 32])
    assert list(ppl.x) == [4, 8, 16, 32]
    assert np.allclose(ppl.y, expected["perplexity"])
    assert np.allclose(compute.y, expected["forward_tokens"])
    # stride == window is disjoint chunking: the last point is labkit's disjoint perplexity
    assert ppl.y[-1] == pytest.approx(perplexity(model, tokenizer, TEXT, window=32).perplexity)
    assert list(chosen.x) == [8] and chosen.y[0] == pytest.approx(expected["perplexity"][1])
    assert "stride 8 tokens" in e.figure.layout.title.text

    figure_id = id(e.figure)
    e.stride.value = 16  # from the cache: no new sweep
    assert calls == [(32, (4, 8, 16, 32))]
    assert list(e.figure.data[2].x) == [16]
    assert e.figure.data[2].y[0] == pytest.approx(expected["perplexity"][2])

    e.window.value = 16  # a new window: computed once, with the window itself as last stride
    assert calls[-1] == (16, (4, 8, 16))
    assert list(e.figure.data[0].x) == [4, 8, 16]
    assert np.asarray(e.figure.data[1].y)[0] > np.asarray(e.figure.data[1].y)[-1]
    e.window.value = 32
    e.window.value = 16
    assert len(calls) == 2  # both windows cached now
    assert id(e.figure) == figure_id


def test_stride_longer_than_window_shows_a_message(counted_sweeps):
    _, sweep_fn = counted_sweeps
    e = StrideExplorer(windows=[16, 32], strides=[8, 16, 32], window=16, stride=8,
                       sweep_fn=sweep_fn)
    before = (list(e.figure.data[0].x), list(e.figure.data[2].x))
    e.stride.value = 32
    assert "longer than the window" in e.message.value and "1..16" in e.message.value
    assert (list(e.figure.data[0].x), list(e.figure.data[2].x)) == before
    e.stride.value = 16
    assert "longer" not in e.message.value and list(e.figure.data[2].x) == [16]


def test_a_failing_sweep_shows_a_message_not_a_traceback(counted_sweeps):
    calls, sweep_fn = counted_sweeps

    def flaky(window, strides):
        if window == 16:
            raise LabkitError("window=16: the model refuses")
        return sweep_fn(window, strides)

    e = StrideExplorer(windows=[16, 32], strides=[8, 16], window=32, stride=8, sweep_fn=flaky)
    e.window.value = 16
    assert "failed" in e.message.value and "refuses" in e.message.value
    with pytest.raises(LabkitError, match="not on the grid"):
        StrideExplorer(windows=[16], strides=[8], window=64, sweep_fn=flaky)
    with pytest.raises(LabkitError, match="model, tokenizer and texts"):
        StrideExplorer(windows=[16], strides=[8])


def test_stride_explorer_from_profile_clips_windows_to_the_context(model, tokenizer):
    e = stride_explorer(model, tokenizer, TEXT, profile("cpu").settings("evaluation"))
    assert max(e.windows) <= model.config.max_position_embeddings
    assert all(s <= max(e.windows) for s in e.strides)
    assert len(e.figure.data[0].x) >= 2


@pytest.fixture(scope="module")
def scored(model, tokenizer):
    other = build_causal_lm(len(tokenizer), ModelShape(d_model=32, n_layer=2, n_head=2,
                                                       max_len=64), seed=7)
    return {"random A": score_items(model, tokenizer, ITEMS),
            "random B": score_items(other, tokenizer, ITEMS)}


def test_choice_explorer_follows_question_and_model(scored):
    e = ChoiceExplorer(ITEMS, scored)
    for control in e.controls:
        assert control.description
    summed, per_char = e.figure.data
    assert np.allclose(summed.x, scored["random A"].loc[0, "logprobs"])
    chars = np.array([len(c) for c in ITEMS[0]["choices"]])
    assert np.allclose(per_char.x, np.asarray(scored["random A"].loc[0, "logprobs"]) / chars)
    assert summed.marker.color[0] == "#2ca02c"  # the answer in green

    e.question.value = "2"
    assert len(e.figure.data[0].x) == 3
    assert np.allclose(e.figure.data[0].x, scored["random A"].loc[2, "logprobs"])
    assert e.figure.data[0].marker.color[2] == "#2ca02c"
    assert "q-2" in e.message.value

    e.model.value = "random B"
    assert np.allclose(e.figure.data[0].x, scored["random B"].loc[2, "logprobs"])
    assert e.figure.layout.title.text.startswith("random B")

    e.question.value = "q-1"  # an id works too
    assert np.allclose(e.figure.data[0].x, scored["random B"].loc[1, "logprobs"])
    picked = "ABC"[int(np.argmax(scored["random B"].loc[1, "logprobs"]))]
    assert e.figure.layout.annotations[0].text == f"acc picks {picked}."


@pytest.mark.parametrize("typed", ["3", "-1", "wk-9999", "", "one"])
def test_choice_explorer_bad_question_shows_a_message(scored, typed):
    e = ChoiceExplorer(ITEMS, scored, question=1)
    before = list(e.figure.data[0].x)
    e.question.value = typed
    assert "valid is a number 0..2" in e.message.value
    assert list(e.figure.data[0].x) == before


def test_choice_explorer_refuses_scores_of_other_items(scored):
    with pytest.raises(LabkitError, match="does not cover"):
        ChoiceExplorer(ITEMS[:2], scored)
    with pytest.raises(LabkitError, match="scores is empty"):
        ChoiceExplorer(ITEMS, {})
