"""DPO and its alternatives with TRL: the preference data checks, short runs of every trainer on
a random tiny Llama, the held-out scoring, and labkit's loss against the trainer's own numbers.

(Each labkit loss against TRL's loss code on hand-made log-probs is in test_align_losses.py.)
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.align import (
    METHODS,
    PairScores,
    beta_sweep,
    dpo_loss,
    preference_accuracy,
    preference_dataset,
    score_pairs,
    sequence_logprobs,
    train_preference,
    trl_cross_check,
    unpaired_dataset,
    validate_pairs,
)
from labkit.align.dpo import encode_response, logprob_shift, pipeline_table, preference_trainer
from labkit.errors import LabkitError
from labkit.loaders import load_records, load_tokenizer
from labkit.models import ModelShape, build_causal_lm


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def shipped():
    return load_records("preferences")


@pytest.fixture(scope="module")
def pairs(shipped):
    return [p for p in shipped if p["split"] == "train"][:8]


def tiny(tok, seed=0):
    return build_causal_lm(len(tok), ModelShape(64, 2, 2), seed=seed)


PAIR = {"id": "x-1", "prompt": "Where is krarglass found?", "chosen": "In Bofaimora.",
        "rejected": "In Lafemara."}


# --- the data checks -------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    ({**PAIR, "chosen": None}, r"x-1.*missing \['chosen'\]"),
    ({k: v for k, v in PAIR.items() if k != "rejected"}, r"x-1.*missing \['rejected'\]"),
    ({**PAIR, "prompt": "   "}, "x-1.*empty prompt"),
    ({**PAIR, "rejected": ""}, "x-1.*empty rejected"),
    ({**PAIR, "rejected": " In Bofaimora. "}, "x-1.*identical"),
    ("not a pair", "pair 1 is a str"),
])
def test_bad_pairs_are_named(bad, message):
    with pytest.raises(LabkitError, match=message):
        validate_pairs([PAIR, bad])


def test_empty_pairs_and_bad_formats_are_rejected(tok):
    with pytest.raises(LabkitError, match="empty"):
        validate_pairs([])
    with pytest.raises(LabkitError, match="format"):
        preference_dataset([PAIR], tok, format="chatml")
    with pytest.raises(LabkitError, match="tokenizer"):
        preference_dataset([PAIR], format="standard")
    with pytest.raises(LabkitError, match="batch_size"):
        unpaired_dataset([PAIR, PAIR], batch_size=1)


def test_a_pair_longer_than_the_context_is_named(tok):
    n = len(encode_response(tok, PAIR["prompt"], PAIR["chosen"])[0])
    validate_pairs([PAIR], tok, max_length=n + 5)  # fits
    long = {**PAIR, "id": "x-2", "rejected": "very " * 300 + "long."}
    with pytest.raises(LabkitError, match=r"x-2'\): prompt \+ rejected is \d+ tokens.*context of "
                                          r"256 tokens"):
        validate_pairs([PAIR, long], tok, max_length=256)
    model = tiny(tok)
    with pytest.raises(LabkitError, match="x-2"):  # the trainer checks against the context
        train_preference("dpo", model, tok, [PAIR, long], steps=1, lr=1e-3, batch_size=2)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), "0.1", True])
def test_bad_beta_is_rejected_before_training(tok, beta):
    with pytest.raises(LabkitError, match="beta"):
        train_preference("dpo", tiny(tok), tok, [PAIR, PAIR], steps=1, lr=1e-3, beta=beta,
                         batch_size=2)


def test_bad_method_and_sizes_are_rejected(tok):
    with pytest.raises(LabkitError, match="method='ppo'.*dpo, ipo, hinge, kto, orpo, simpo"):
        train_preference("ppo", tiny(tok), tok, [PAIR], steps=1, lr=1e-3, batch_size=1)
    with pytest.raises(LabkitError, match="steps=0"):
        train_preference("dpo", tiny(tok), tok, [PAIR], steps=0, lr=1e-3, batch_size=1)
    with pytest.raises(LabkitError, match="lr=2"):
        train_preference("dpo", tiny(tok), tok, [PAIR], steps=1, lr=2, batch_size=1)


def test_dataset_formats(tok, pairs):
    conv = preference_dataset(pairs, tok)
    assert conv.column_names == ["prompt", "chosen", "rejected"]
    assert conv[0]["prompt"] == [{"role": "user", "content": pairs[0]["prompt"]}]
    assert conv[0]["rejected"] == [{"role": "assistant", "content": pairs[0]["rejected"]}]
    std = preference_dataset(pairs, tok, format="standard")
    assert std[0]["prompt"] == f"<|user|>{pairs[0]['prompt']}<|end|><|assistant|>"
    assert std[0]["chosen"] == pairs[0]["chosen"] + "<|end|>"
    # The standard prompt + answer is exactly the chat template of the conversation.
    ids, start = encode_response(tok, pairs[0]["prompt"], pairs[0]["chosen"])
    assert tok.decode(ids) == std[0]["prompt"] + std[0]["chosen"]
    assert tok.decode(ids[start:]) == std[0]["chosen"]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(n=st.integers(2, 13), batch=st.integers(2, 6))
def test_unpaired_batches_are_balanced_and_kl_pairs_mismatched(n, batch):
    pairs = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
             for i in range(n)]
    rows = unpaired_dataset(pairs, batch_size=batch).to_list()
    assert len(rows) == 2 * n
    for start in range(0, len(rows), 2 * batch):  # one KTO batch
        block = rows[start:start + 2 * batch]
        assert sum(r["label"] for r in block) == len(block) // 2  # as many good as bad
        prompts = [r["prompt"][0]["content"] for r in block]
        if len(block) >= 4:  # KTO's KL pairs: each prompt with the previous row's answer
            assert all(prompts[i] != prompts[i - 1] for i in range(len(block)))
        for r in block:  # chosen is desirable, rejected undesirable
            kind = r["completion"][0]["content"].split()[0]
            assert (kind == "good") == r["label"]


# --- scoring held-out pairs ------------------------------------------------------------------


def test_score_pairs_equals_sequence_logprobs(tok, pairs):
    model = tiny(tok, seed=1).eval()
    scores = score_pairs(model, tok, pairs[:3], batch_size=2)
    for i, pair in enumerate(pairs[:3]):
        for key, got in (("chosen", scores.chosen_logps), ("rejected", scores.rejected_logps)):
            ids, start = encode_response(tok, pair["prompt"], pair[key])
            x = torch.tensor([ids])
            mask = torch.zeros_like(x)
            mask[0, start:] = 1
            with torch.no_grad():
                expected = sequence_logprobs(model, x, torch.ones_like(x), mask).sum()
            assert got[i].item() == pytest.approx(expected.item(), abs=1e-4)
    assert scores.defects == [p["defect"] for p in pairs[:3]]
    # Against itself the KL is zero; against another model it is positive.
    assert score_pairs(model, tok, pairs[:2], ref_model=model).kl == pytest.approx(0, abs=1e-6)
    other = score_pairs(model, tok, pairs[:2], ref_model=tiny(tok, seed=2))
    assert other.kl > 0.01
    assert other.reference().chosen_logps.tolist() == other.ref_chosen_logps.tolist()


def test_preference_accuracy_by_hand():
    scores = PairScores(
        ids=list("abcd"), defects=["rude", "rude", "verbose", "verbose"],
        chosen_logps=torch.tensor([-4.0, -9.0, -2.0, -6.0]),
        rejected_logps=torch.tensor([-8.0, -8.0, -6.0, -6.0]),
        chosen_tokens=torch.tensor([2.0, 3.0, 1.0, 2.0]),
        rejected_tokens=torch.tensor([4.0, 2.0, 2.0, 3.0]),
        ref_chosen_logps=torch.tensor([-5.0, -8.0, -3.0, -6.0]),
        ref_rejected_logps=torch.tensor([-7.0, -8.0, -5.0, -6.0]))
    dpo = preference_accuracy(scores, None, None, None, "dpo", beta=0.5)
    # log-ratios chosen (+1, -1, +1, 0), rejected (-1, 0, -1, 0): wins, loses, wins, ties
    assert dpo.loc["all", "accuracy"] == 0.5
    assert dpo.loc["rude", "accuracy"] == 0.5 and dpo.loc["verbose", "pairs"] == 2
    assert dpo.loc["all", "margin"] == pytest.approx(0.5 * (2 - 1 + 2 + 0) / 4)
    # averages chosen (-2, -3, -2, -3), rejected (-2, -4, -3, -2)
    like = preference_accuracy(scores, None, None, None, "likelihood")
    assert like["accuracy"].to_dict() == {"all": 0.5, "rude": 0.5, "verbose": 0.5}
    simpo = preference_accuracy(scores, None, None, None, "simpo")  # beta 2 scales the margin
    assert simpo.loc["all", "margin"] == pytest.approx(2 * (0 + 1 + 1 - 1) / 4)
    with pytest.raises(LabkitError, match="ref_model"):
        preference_accuracy(scores.reference(), None, None, None, "kto")
    # log pi - log ref: chosen (+1, -1, +1, 0), rejected (-1, 0, -1, 0)
    moved = logprob_shift(scores)
    assert moved.loc["all", "chosen"] == pytest.approx(0.25)
    assert moved.loc["rude", "rejected"] == pytest.approx(-0.5)
    assert moved.loc["verbose", "pairs"] == 2
    assert logprob_shift(scores, scores.reference()).equals(moved)
    with pytest.raises(LabkitError, match="no reference"):
        logprob_shift(scores.reference())
    with pytest.raises(LabkitError, match="method='rlhf'"):
        preference_accuracy(scores, None, None, None, "rlhf")


# --- short runs on a random tiny Llama -------------------------------------------------------


def test_dpo_run_learns_moves_the_policy_and_freezes_the_reference(tok, shipped):
    """Full fine-tuning, 6 steps over 4 pairs: the policy moves, its DPO loss on those pairs
    drops below log 2, and the reference copy stays as it was; the trainer's loss at every step
    equals labkit's dpo_loss on log-probs computed with labkit's own sequence_logprobs."""
    pairs = [p for p in shipped if p["defect"] in ("wrong_fact", "rude")][:4]  # short answers
    # float64 weights; both sides still take float32 log-softmaxes, so agreement is ~1e-6.
    model = tiny(tok).double()
    start = copy.deepcopy(model)
    trainer = preference_trainer("dpo", model, tok, pairs, steps=6, lr=3e-3, beta=0.1,
                                 batch_size=2, seed=0, lora=None)
    ref = trainer.ref_model
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with torch.no_grad():
            args = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
            policy = sequence_logprobs(model, *args).sum(-1)
            reference = sequence_logprobs(ref, *args).sum(-1)
        n = len(policy) // 2  # the batch is [chosen..., rejected...]
        ours = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], beta=0.1)
        seen.append((loss.item(), ours.loss.item()))
        return loss

    trainer.compute_loss = spy
    trainer.train()
    logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(seen) == len(logged) == 6
    for (trl, ours), log in zip(seen, logged):
        assert ours == pytest.approx(trl, abs=1e-5)
        assert log == pytest.approx(trl, abs=1e-5)
    assert seen[0][0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at first

    policy = trainer.model
    moved = [not torch.equal(a, b) for a, b in zip(policy.parameters(), start.parameters())]
    assert all(moved)
    for a, b in zip(ref.parameters(), start.parameters()):
        assert torch.equal(a, b)
    before = score_pairs(start, tok, pairs, ref_model=start)
    after = score_pairs(policy, tok, pairs, ref_model=start)
    loss = lambda s: dpo_loss(s.chosen_logps, s.rejected_logps, s.ref_chosen_logps,  # noqa: E731
                              s.ref_rejected_logps, beta=0.1).loss.item()
    assert loss(before) == pytest.approx(math.log(2), abs=1e-6)
    assert loss(after) < loss(before) - 0.05


def test_nll_weight_adds_the_mean_chosen_nll(tok, pairs):
    """RPO: DPO + nll_weight * mean NLL per chosen token (TRL's "sft" loss). At the first step
    policy == reference, so the loss is log 2 + weight * that NLL, computed here by labkit."""
    model = tiny(tok, seed=6)
    run = train_preference("dpo", model, tok, pairs[:4], steps=1, lr=1e-3, batch_size=4,
                           nll_weight=0.5, lora={"r": 4, "lora_alpha": 8})
    scores = score_pairs(model, tok, pairs[:4])
    nll = -scores.chosen_logps.sum().item() / scores.chosen_tokens.sum().item()
    assert nll > 5  # a random model: about log(vocab) per token
    assert run.history["loss"].iloc[0] == pytest.approx(math.log(2) + 0.5 * nll, abs=1e-4)
    assert run.config["nll_weight"] == 0.5
    with pytest.raises(LabkitError, match="nll_weight=-1"):
        train_preference("dpo", model, tok, pairs[:4], steps=1, lr=1e-3, batch_size=4,
                         nll_weight=-1)
    with pytest.raises(LabkitError, match="KTOTrainer"):
        train_preference("kto", model, tok, pairs[:4], steps=1, lr=1e-3, batch_size=4,
                         nll_weight=1.0)


@pytest.fixture(scope="module")
def lora_dpo(tok, pairs):
    model = tiny(tok, seed=4)
    return model, train_preference("dpo", model, tok, pairs, steps=3, lr=1e-2, beta=0.1,
                                   batch_size=4, seed=1, lora={"r": 4, "lora_alpha": 8})


def test_lora_dpo_keeps_the_reference_in_the_same_weights(tok, pairs, lora_dpo):
    model, run = lora_dpo
    assert run.weight_copies == 1 and run.models == 2
    assert run.trainable_params < run.total_params / 5
    assert list(run.history["step"]) == [1, 2, 3]
    assert run.history["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-5)
    assert run.history["margin"].iloc[-1] != 0
    assert run.config["lora"]["r"] == 4 and run.wall_s > 0 and run.cpu_s > 0
    # The input model is untouched (it was copied) and is the reference: adapter off.
    x = torch.tensor([encode_response(tok, pairs[0]["prompt"], pairs[0]["chosen"])[0]])
    with torch.no_grad(), run.model.disable_adapter():
        off = run.model(input_ids=x).logits
    with torch.no_grad():
        assert torch.allclose(off, model(input_ids=x).logits, atol=1e-5)
        on = run.model(input_ids=x).logits
        # TRL's fused-head patch is gone, so a copy runs its own weights.
        clone = copy.deepcopy(run.model)
        assert torch.equal(clone(input_ids=x).logits, on)
        for p in clone.parameters():
            p.add_(0.1)
        assert not torch.allclose(clone(input_ids=x).logits, on)
    assert not torch.allclose(on, off)


@pytest.mark.parametrize("method", ["ipo", "hinge", "kto", "orpo", "simpo"])
def test_every_method_trains_with_its_trl_trainer(tok, pairs, method):
    run = train_preference(method, tiny(tok, seed=5), tok, pairs, steps=2, lr=1e-2,
                           batch_size=4, seed=2, lora={"r": 4, "lora_alpha": 8})
    assert run.config["trainer"] == METHODS[method].trainer
    assert run.beta == METHODS[method].beta
    assert run.models == (2 if METHODS[method].reference else 1)
    h = run.history
    assert list(h["step"]) == [1, 2] and h["loss"].notna().all()
    assert {"chosen_reward", "rejected_reward", "margin"} <= set(h.columns)
    if method == "kto":
        assert "kl" in h.columns
        assert h["loss"].iloc[0] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) per answer
    if method == "simpo":
        assert (h["nll_loss"] == 0).all()  # cpo_alpha = 0: pure SimPO, no NLL term
    if method == "orpo":
        assert (h["nll_loss"] > 0).all()


def test_full_fine_tuning_keeps_a_reference_copy(tok, pairs):
    run = train_preference("kto", tiny(tok), tok, pairs[:4], steps=1, lr=1e-3, batch_size=2,
                           lora=None)
    assert run.weight_copies == 2
    run_free = train_preference("simpo", tiny(tok), tok, pairs[:4], steps=1, lr=1e-3,
                                batch_size=2, lora=None)
    assert run_free.weight_copies == 1 and run_free.models == 1
    assert run.state_mib > run_free.state_mib  # the reference's weights are counted


def test_beta_sweep_reuses_runs_and_measures_kl(tok, pairs, lora_dpo):
    model, run = lora_dpo
    sweep = beta_sweep(model, tok, pairs, pairs[:4], [0.1, 1.0], steps=2, lr=1e-2,
                       batch_size=4, seed=1, lora={"r": 4, "lora_alpha": 8}, runs={0.1: run})
    assert list(sweep["beta"]) == [0.1, 1.0]
    assert sweep.loc[0, "final_loss"] == run.final_loss  # reused, not retrained
    assert (sweep["kl"] > 0).all() and sweep["accuracy"].between(0, 1).all()
    with pytest.raises(LabkitError, match="reference"):
        beta_sweep(model, tok, pairs, pairs, [0.1], method="orpo", steps=1, lr=1e-3,
                   batch_size=2)


def test_trl_cross_check_agrees():
    table = trl_cross_check(seed=3, pairs=5, beta=0.3)
    assert list(table.index) == ["dpo", "ipo", "hinge", "kto", "orpo", "simpo"]
    assert (table["abs_diff"] < 1e-6).all()


def test_pipeline_table_counts_models_and_reads_the_runs(lora_dpo):
    _, run = lora_dpo
    table = pipeline_table({"dpo": run})
    assert table.loc["RLHF (PPO, lab 07)", "models"] == "3-4"
    assert table.loc["RLHF (PPO, lab 07)", "stages"] == 2
    assert bool(table.loc["RLHF (PPO, lab 07)", "samples"])
    assert table.loc["DPO / IPO / hinge", "models"] == "2"
    assert table.loc["ORPO / SimPO", "models"] == "1"
    # measured from the trainer: policy + reference, but one weight copy under LoRA
    assert table.loc["DPO / IPO / hinge", "measured here"] == "dpo 2/1"
    assert table.loc["KTO", "measured here"] == "-"
    with pytest.raises(LabkitError, match="'ppo'"):
        pipeline_table({"ppo": run})


# --- the shipped adapter ---------------------------------------------------------------------


# The shipped adapter's implicit-reward accuracy over the SFT model's likelihood accuracy on the
# held-out pairs, at least (its card: 0.950 vs 0.888 on 596 pairs).
MARGIN_OVER_SFT = 0.05


def test_shipped_dpo_adapter_beats_sft_as_its_card_says(tok, shipped):
    """Re-measure the shipped adapter on every held-out pair: the numbers of its metrics.json
    (and README) come back, and DPO's held-out accuracy beats the SFT model's by the margin the
    card reports."""
    import json

    from labkit.loaders import embedded_paths, load_adapter_model, load_model

    path = embedded_paths()["dpo"]
    assert (path / "adapter_model.safetensors").exists(), "run `labkit train-models dpo`"
    card = json.loads((path / "metrics.json").read_text())
    test = [p for p in shipped if p["split"] == "test"]
    assert card["heldout_pairs"] == len(test)
    sft = load_adapter_model("sft", merge=True)
    scores = score_pairs(load_model("dpo"), tok, test, ref_model=sft)
    got = {"dpo_implicit_reward": preference_accuracy(scores, None, None, None, "dpo",
                                                      beta=card["recipe"]["beta"]),
           "dpo_likelihood": preference_accuracy(scores, None, None, None, "likelihood"),
           "sft_likelihood": preference_accuracy(scores.reference(), None, None, None,
                                                 "likelihood")}
    for name, table in got.items():  # one pair may flip on another CPU's rounding
        for defect, accuracy in table["accuracy"].items():
            assert accuracy == pytest.approx(card["heldout_accuracy"][name][defect],
                                             abs=1.01 / table.loc[defect, "pairs"]), (name, defect)
    assert scores.kl == pytest.approx(card["kl_from_sft"], rel=1e-3)
    sft_acc = got["sft_likelihood"].loc["all", "accuracy"]
    assert got["dpo_implicit_reward"].loc["all", "accuracy"] > sft_acc + MARGIN_OVER_SFT
    assert got["dpo_likelihood"].loc["all", "accuracy"] > sft_acc
    readme = (path / "README.md").read_text()
    assert f"| all | {len(test)} | {card['heldout_accuracy']['sft_likelihood']['all']:.3f}" in readme
