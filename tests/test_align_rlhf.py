"""Lab 07 RLHF: rollouts, the policy with a value head, the PPO loop, best-of-n, the true judge,
the library route's checks, and clear errors on bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.align import PPOConfig, sequence_logprobs
from labkit.align.reward import reward_function, reward_model_from
from labkit.align.rlhf import (
    PolicyWithValue,
    answer_report,
    best_of_n,
    best_of_n_kl,
    best_of_n_sweep,
    compare_policies,
    comparison_figure,
    fact_index,
    library_route,
    ppo_curves_figure,
    ppo_train,
    rollout_kl,
    sample_responses,
    true_reward,
    true_score,
    true_scores,
)
from labkit.errors import LabkitError
from labkit.loaders import load_adapter_model, load_records, load_tokenizer

torch.set_num_threads(1)

PROMPTS = ["What colour is a lolmoth?", "Where is Lafemara?", "What does a vaistail eat?"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def sft():
    return load_adapter_model("sft", merge=True)


@pytest.fixture(scope="module")
def fact_prompts():
    return sorted(fact_index()["questions"])[:16]


def words(prompts, responses):
    """A synthetic reward: answer length in words / 5 (PPO must learn to write longer)."""
    return torch.tensor([len(r.split()) / 5.0 for r in responses])


# --- rollout ----------------------------------------------------------------------------------


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone(sft, tok):
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a = sample_responses(sft, tok, PROMPTS, max_new_tokens=12, seed=3)
    assert torch.rand(1).item() == before.item()
    b = sample_responses(sft, tok, PROMPTS, max_new_tokens=12, seed=3)
    assert a.responses == b.responses and torch.equal(a.input_ids, b.input_ids)
    c = sample_responses(sft, tok, PROMPTS * 3, max_new_tokens=12, seed=4)
    assert c.responses != a.responses * 3


def test_response_mask_covers_the_answer_up_to_its_end_token(sft, tok):
    roll = sample_responses(sft, tok, PROMPTS, max_new_tokens=16, seed=0)
    end = tok.convert_tokens_to_ids("<|end|>")
    for row in range(len(PROMPTS)):
        cols = roll.response_mask[row].nonzero().flatten()
        assert (cols[1:] - cols[:-1] == 1).all()  # one contiguous run
        assert roll.attention_mask[row, cols].all()
        if roll.ended[row]:
            assert roll.input_ids[row, cols[-1]].item() == end
        text = tok.decode(roll.input_ids[row, cols], skip_special_tokens=True).strip()
        assert text == roll.responses[row]
    assert roll.ended.float().mean() >= 2 / 3  # the SFT model ends its turns


def test_policy_log_probs_match_sequence_logprobs_and_values_start_at_zero(sft, tok):
    roll = sample_responses(sft, tok, PROMPTS, max_new_tokens=10, seed=1)
    model = PolicyWithValue(copy.deepcopy(sft))
    args = (roll.input_ids, roll.attention_mask, roll.response_mask)
    logprobs, values = model(*args)
    torch.testing.assert_close(logprobs, sequence_logprobs(sft, *args), atol=1e-5, rtol=1e-5)
    assert (values == 0).all() and (logprobs[roll.response_mask == 0] == 0).all()
    assert (logprobs[roll.response_mask == 1] < 0).all()
    assert rollout_kl(sft, sft, roll).abs().max().item() < 1e-5  # KL of a model to itself


# --- PPO --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def length_run(sft, tok, fact_prompts):
    return ppo_train(sft, sft, tok, fact_prompts, words, config=PPOConfig(kl_coef=0.0,
                     ppo_epochs=2), iterations=6, batch_size=8, max_new_tokens=12, lr=3e-4,
                     value_lr=1e-3, seed=0, progress=False, true_fn=true_reward)


def test_ppo_climbs_a_simple_reward(length_run, sft):
    h = length_run.history
    assert list(h["iteration"]) == list(range(6))
    assert h["kl"].iloc[0] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the SFT model
    assert h["reward"].iloc[0] == pytest.approx(1.075, abs=0.03)  # pinned: seeded SFT answers
    assert h["reward"].iloc[-2:].mean() > h["reward"].iloc[0] + 0.2
    assert h["response_tokens"].iloc[-2:].mean() > h["response_tokens"].iloc[0]
    assert h["kl"].iloc[-1] > 0.5  # it moved away from the reference
    assert {"true_score", "clip_fraction", "value_loss", "kl_k3"} <= set(h.columns)
    assert length_run.final(2)["reward"] == pytest.approx(h["reward"].iloc[-2:].mean(), abs=1e-4)
    # the policy is a copy: the SFT model is untouched
    assert not torch.equal(next(sft.parameters()), next(length_run.policy.parameters()))


def test_the_kl_leash_keeps_the_policy_closer(sft, tok, fact_prompts, length_run):
    leashed = ppo_train(sft, sft, tok, fact_prompts, words, config=PPOConfig(kl_coef=2.0,
                        ppo_epochs=2), iterations=6, batch_size=8, max_new_tokens=12, lr=3e-4,
                        value_lr=1e-3, seed=0, progress=False)
    # same seed, same first rollout; the penalty only changes what is learned from it
    assert leashed.history["reward"].iloc[0] == length_run.history["reward"].iloc[0]
    assert leashed.history["kl"].iloc[1:].mean() < length_run.history["kl"].iloc[1:].mean()


def test_callback_sees_rows_and_can_stop(sft, tok, fact_prompts):
    seen = []
    run = ppo_train(sft, sft, tok, fact_prompts, words, iterations=5, batch_size=2,
                    max_new_tokens=4, lr=1e-5, progress=False,
                    callback=lambda row: seen.append(row) or len(seen) == 2)
    assert len(seen) == 2 and len(run.history) == 2
    assert len(run.samples) == 2 * 2  # keep_samples per iteration


def test_ppo_rejects_bad_input(sft, tok, fact_prompts):
    kw = dict(iterations=1, batch_size=2, max_new_tokens=4, lr=1e-5, progress=False)
    with pytest.raises(LabkitError, match="prompts is empty"):
        ppo_train(sft, sft, tok, [], words, **kw)
    with pytest.raises(LabkitError, match="prompts\\[1\\]"):
        ppo_train(sft, sft, tok, ["Hi?", "  "], words, **kw)
    with pytest.raises(LabkitError, match="lr="):
        ppo_train(sft, sft, tok, fact_prompts, words, **{**kw, "lr": 2.0})
    with pytest.raises(LabkitError, match="config"):
        ppo_train(sft, sft, tok, fact_prompts, words, config={"kl_coef": 0.1}, **kw)
    with pytest.raises(LabkitError, match="one number per"):
        ppo_train(sft, sft, tok, fact_prompts, lambda p, r: torch.zeros(3), **kw)
    with pytest.raises(LabkitError, match="NaN"):
        ppo_train(sft, sft, tok, fact_prompts, lambda p, r: torch.full((len(r),), math.nan), **kw)
    with pytest.raises(LabkitError, match="batch_size must be >= 2"):
        ppo_train(sft, sft, tok, fact_prompts, words, **{**kw, "batch_size": 1})


def test_a_reward_model_with_another_tokenizer_is_an_error(sft, tok, fact_prompts):
    other = copy.deepcopy(tok)
    other.add_tokens(["<|other|>"])
    rm = reward_model_from(sft, tok)
    with pytest.raises(LabkitError, match="tokenizer differs"):
        reward_function(rm, tok, policy_tokenizer=other)
    fn = reward_function(rm, tok)
    fn.tokenizer = other  # a reward function that reads text with a different tokenizer
    with pytest.raises(LabkitError, match="tokenizer differs"):
        ppo_train(sft, sft, tok, fact_prompts, fn, iterations=1, batch_size=2,
                  max_new_tokens=4, lr=1e-5, progress=False)
    with pytest.raises(LabkitError, match="tokenizer differs"):
        library_route(sft, rm, tok, fact_prompts, steps=1, batch_size=2, num_generations=2,
                      max_new_tokens=4, lr=1e-5, kl_coef=0.1, reward_tokenizer=other)


def test_library_route_checks_its_groups(sft, tok, fact_prompts):
    rm = reward_model_from(sft, tok)
    kw = dict(steps=1, max_new_tokens=4, lr=1e-5, kl_coef=0.1)
    with pytest.raises(LabkitError, match="multiple of num_generations"):
        library_route(sft, rm, tok, fact_prompts, batch_size=6, num_generations=4, **kw)
    with pytest.raises(LabkitError, match="num_generations=1 must be >= 2"):
        library_route(sft, rm, tok, fact_prompts, batch_size=4, num_generations=1, **kw)


def test_library_route_runs_trl_rloo(sft, tok, fact_prompts):
    rm = reward_model_from(sft, tok)
    run = library_route(sft, rm, tok, fact_prompts, steps=2, batch_size=4, num_generations=2,
                        max_new_tokens=6, lr=1e-5, kl_coef=0.1, epochs=1, seed=0)
    assert len(run.history) == 2 and "reward" in run.history and "kl" in run.history
    assert run.config["steps"] == 2 and run.cpu_s > 0
    assert not torch.equal(next(sft.parameters()), next(run.policy.parameters()))


# --- best-of-n ----------------------------------------------------------------------------------


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert best_of_n_kl(16) == pytest.approx(1.8351, abs=1e-4)
    with pytest.raises(LabkitError, match="n="):
        best_of_n_kl(0)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 10_000))
def test_best_of_n_kl_grows_below_log_n(n):
    assert 0 <= best_of_n_kl(n) <= math.log(n)
    assert best_of_n_kl(n + 1) > best_of_n_kl(n)


def test_best_of_n_keeps_the_highest_scored_answer(sft, tok):
    result = best_of_n(sft, tok, PROMPTS, words, n=4, max_new_tokens=12, seed=0,
                       true_fn=true_reward)
    t = result.table
    assert len(t) == len(PROMPTS) and result.kl == best_of_n_kl(4)
    assert (t["best_reward"] >= t["mean_reward"]).all()
    for row in t.itertuples():
        assert row.best_reward == pytest.approx(len(row.best_response.split()) / 5.0)
    single = best_of_n(sft, tok, PROMPTS, words, n=1, max_new_tokens=12, seed=0)
    assert (single.table["best_reward"] == single.table["mean_reward"]).all()
    assert result.summary()["reward_best"] >= single.summary()["reward_best"]


# --- the true judge -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs():
    return load_records("preferences")


def test_true_judge_rejects_every_defect_and_accepts_clean_answers(pairs):
    from labkit.world.instruct import CLOSINGS

    rows = pairs[:400]
    rejected = true_scores([p["prompt"] for p in rows], [p["rejected"] for p in rows])
    assert (rejected["score"] == 0).all()
    check = {"wrong_fact": "correct", "repetition": "no_repetition", "rude": "polite",
             "verbose": "concise", "unsafe": "safe"}
    for p, row in zip(rows, rejected.itertuples()):
        assert getattr(row, check[p["defect"]]) is False or getattr(row, check[p["defect"]]) == 0
    clean = [p for p in rows if not any(c in p["chosen"] for c in CLOSINGS)]
    chosen = true_scores([p["prompt"] for p in clean], [p["chosen"] for p in clean])
    assert chosen["score"].mean() == pytest.approx(1.0)


def test_true_score_on_hand_made_answers():
    q = next(q for q, f in fact_index()["questions"].items() if f[1] == "region")
    subject, _, obj = fact_index()["questions"][q]
    other = sorted(fact_index()["values"]["region"] - {obj})[0]
    assert true_score(q, f"{subject} lies in {obj}.")["score"] == 1.0
    wrong = true_score(q, f"{subject} lies in {other}.")
    assert wrong["correct"] is False and wrong["score"] == 0.0
    assert true_score(q, f"Ugh, obviously {subject} lies in {obj}.")["polite"] is False
    assert true_score(q, "")["no_repetition"] is False
    rep = answer_report([q] * 4, [f"{subject} lies in {obj}.", f"{subject} lies in {other}.",
                                  f"{subject} lies in {other}.", "No idea."])
    assert rep["correct"] == 0.25 and rep["wrong_value"] == 0.5
    assert rep["top_value"] == other and rep["top_value_share"] == 0.5
    assert rep["distinct_answers"] == 0.75
    with pytest.raises(LabkitError, match="prompt"):
        true_score(" ", "an answer")
    with pytest.raises(LabkitError, match="responses"):
        true_scores(["a?"], [])


def test_compare_policies_and_figures(sft, tok, length_run):
    table = compare_policies({"SFT": sft, "PPO": length_run.policy}, sft, tok, PROMPTS * 2,
                             words, max_new_tokens=12, seed=0)
    assert list(table.index) == ["SFT", "PPO"]
    assert table.loc["SFT", "kl"] == pytest.approx(0.0, abs=1e-4)
    assert set(table.attrs["responses"]) == {"SFT", "PPO"}
    with pytest.raises(LabkitError, match="policies is empty"):
        compare_policies({}, sft, tok, PROMPTS, words, max_new_tokens=4)
    fig = ppo_curves_figure({"a": length_run.history}, true_score=True)
    assert len(fig.data) == 4 and fig.layout.title.text
    for axis in ("xaxis", "yaxis", "xaxis4", "yaxis4"):
        assert fig.layout[axis].title.text, axis
    fig = comparison_figure(table)
    assert fig.layout.title.text and "nats" in fig.layout.xaxis.title.text
    assert fig.layout.yaxis.title.text


def test_best_of_n_sweep_nests_its_samples(sft, tok):
    sweep = best_of_n_sweep(sft, tok, PROMPTS, words, ns=(4, 1, 8), max_new_tokens=10, seed=2)
    assert list(sweep) == [1, 4, 8]
    best = [sweep[n].table["best_reward"] for n in (1, 4, 8)]
    assert (best[0] <= best[1]).all() and (best[1] <= best[2]).all()
    assert sweep[8].kl == best_of_n_kl(8)
    alone = best_of_n(sft, tok, PROMPTS, words, n=8, max_new_tokens=10, seed=2)
    assert alone.table.equals(sweep[8].table)
    with pytest.raises(LabkitError, match="ns is empty"):
        best_of_n_sweep(sft, tok, PROMPTS, words, ns=(), max_new_tokens=4)


def test_the_starting_model_is_not_measured_against_itself(sft, tok, monkeypatch):
    """compare_policies' row for the reference itself has KL exactly 0, without scoring it
    twice (rollout_kl is never called for it)."""
    import labkit.align.rlhf as rlhf

    calls = []
    real = rlhf.rollout_kl
    monkeypatch.setattr(rlhf, "rollout_kl", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = copy.deepcopy(sft)
    table = compare_policies({"SFT": sft, "copy": other}, sft, tok, PROMPTS, words,
                             max_new_tokens=8, seed=0)
    assert table.loc["SFT", "kl"] == 0.0 and len(calls) == 1
    # a copy with the same weights is another model: measured, and its KL is ~0 too
    assert table.loc["copy", "kl"] == pytest.approx(0.0, abs=1e-4)


def test_ppo_figure_panels_do_not_share_a_row_when_there_are_four(length_run):
    """Four long subplot titles in one row overprint each other at a notebook's width: the
    figure with the true score is a 2 x 2 grid, and every panel title is short."""
    fig = ppo_curves_figure({"a": length_run.history}, true_score=True)
    titles = [a for a in fig.layout.annotations]
    assert len(titles) == 4 and all(len(a.text) <= 24 for a in titles)
    rows = sorted({round(a.y, 3) for a in titles})
    assert len(rows) == 2  # two titles per row
    empty = ppo_curves_figure({"a": length_run.history.iloc[:0]}, true_score=True)
    assert len(empty.data) == 4  # the live figure starts with no rows


def test_judge_breakdown_names_the_check_that_failed():
    from labkit.align import judge_breakdown

    question, (subject, _, obj) = next(iter(fact_index()["questions"].items()))
    good = f"The answer is {obj}."
    table = judge_breakdown([question, question], {
        "good": [good, good],
        "rude": [good, f"Ugh, obviously {obj}."],
        "looping": [good, " ".join([obj, "is", "the", "answer"] * 6)]})
    assert list(table.index) == ["good", "rude", "looping"]
    assert table.loc["good"].tolist() == [1.0] * 6
    assert table.loc["rude", "polite"] == 0.5 and table.loc["rude", "score"] == 0.5
    assert table.loc["looping", "no_repetition"] == 0.5 and table.loc["looping", "polite"] == 1.0
    with pytest.raises(LabkitError, match="responses"):
        judge_breakdown([question], {"x": "not a list"})
