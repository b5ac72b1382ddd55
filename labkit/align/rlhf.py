"""RLHF with PPO (lab 07): a policy climbs a reward model on a KL leash, and where it breaks.

One PPO iteration, as in InstructGPT and TRL's former PPOTrainer (the pieces are in `ppo.py`):

1. rollout: sample a response to each prompt of a batch from the current policy;
2. score: the reward model rates each (prompt, response) once, at its last token;
3. per-token rewards: -kl_coef * KL(policy || reference) on every response token, plus the score
   on the last one; the reference is the frozen starting (SFT) model;
4. advantages: GAE over the response tokens with the value head's estimates;
5. a few epochs of clipped policy and value updates on that batch.

The policy is a causal LM with a value head (one nn.Linear on the last hidden state, sharing
the body). Also here: best-of-n sampling (the simplest use of a reward model), a rule-based
"true" judge that knows what the reward model only approximates (used to catch reward hacking),
and `library_route`, the same job done by TRL's RLOOTrainer.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd
import torch
import torch.nn as nn

from .. import validate
from ..errors import LabkitError
from ..validate import (
    checks,
    function,
    hf_tokenizer,
    ints,
    maybe,
    nonnegative,
    positive,
    positive_int,
)
from .ppo import (
    PPOConfig,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_k1,
    kl_k3,
    per_token_rewards,
    sequence_logprobs,
    whiten,
)
from .sft import _pad_id, _prompt_ids, _stop_ids, mixed_precision

_model = validate.model
RewardFn = Callable[[Sequence[str], Sequence[str]], "torch.Tensor | Sequence[float]"]


# --- rollout ---------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Sampled responses, as token ids aligned for `sequence_logprobs`: prompts left-padded,
    responses after them; `response_mask` is 1 on response tokens up to and including the
    end-of-turn token, 0 on prompt and padding."""

    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    ended: torch.Tensor  # True where the response ended its turn within the token budget

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


def _unwrap(model):
    """A peft model merged into a plain transformers model (a copy); others as they are."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    return model


def _check_prompts(prompts) -> list[str]:
    prompts = validate.items(prompts, "prompts", what="user questions")
    if not prompts:
        raise LabkitError("prompts is empty; pass at least one user question")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise LabkitError(f"prompts[{i}] = {p!r} must be a non-empty string")
    return prompts


@checks(model=_model, tokenizer=hf_tokenizer, max_new_tokens=positive_int, temperature=positive,
        seed=ints())
@torch.no_grad()
def sample_responses(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                     temperature: float = 1.0, seed: int = 0) -> Rollout:
    """Sample one response per prompt (chat template, generation prompt) at `temperature`,
    stopping at <|end|>. Sampling draws from torch's generator seeded with `seed` inside a
    forked RNG state: the same seed gives the same responses, and the caller's RNG is left
    alone."""
    prompts = _check_prompts(prompts)
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise LabkitError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    if not temperature > 0:
        raise LabkitError(f"temperature={temperature!r} must be > 0")
    encoded = [_prompt_ids(tokenizer, p) for p in prompts]
    width = max(map(len, encoded))
    context = model.config.max_position_embeddings
    if width + max_new_tokens > context:
        raise LabkitError(f"a prompt of {width} tokens + max_new_tokens={max_new_tokens} exceeds "
                          f"the model's context of {context} tokens")
    pad, stops = _pad_id(tokenizer), _stop_ids(tokenizer)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    att = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids, attention_mask=att, do_sample=True,
                                 temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad)
    finally:
        model.train(was_training)
    generated = out[:, width:]
    # Keep each response up to and including its first stop token; the rest is padding.
    is_stop = torch.isin(generated, torch.tensor(stops, device=device))
    seen_stop_before = (is_stop.cumsum(dim=1) - is_stop.long()) > 0
    keep = (~seen_stop_before).long()
    ended = is_stop.any(dim=1)
    generated = torch.where(keep.bool(), generated, torch.full_like(generated, pad))
    input_ids = torch.cat([ids, generated], dim=1)
    attention_mask = torch.cat([att, keep], dim=1)
    response_mask = torch.cat([torch.zeros_like(att), keep], dim=1)
    responses = [tokenizer.decode(row[k.bool()].tolist(), skip_special_tokens=True).strip()
                 for row, k in zip(generated, keep)]
    return Rollout(prompts, responses, input_ids, attention_mask, response_mask, ended.cpu())


# --- the policy with a value head ------------------------------------------------------------


class PolicyWithValue(nn.Module):
    """A causal LM and a value head (nn.Linear(hidden, 1)) on its last hidden state.

    The value of token t is read from the hidden state *before* it (position t-1), the state in
    which the policy chose token t, so values line up with `sequence_logprobs` column by column.
    The head is initialised at zero (every state starts with value 0) and trains on detached
    hidden states, a linear probe of the policy's features.
    """

    def __init__(self, lm):
        super().__init__()
        if not isinstance(lm, nn.Module) or not hasattr(getattr(lm, "config", None), "hidden_size"):
            raise LabkitError(f"lm must be a transformers causal LM, got {type(lm).__name__}")
        self.lm = lm
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, response_mask, temperature: float = 1.0):
        """(log-probs of the response tokens, values), both (batch, tokens) and 0 off-response."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids).last_hidden_state
        logits = self.lm.get_output_embeddings()(hidden[:, :-1]).float() / temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None])
        # The value head reads a detached copy: its regression error (large while it learns the
        # reward scale) must not shake the language model it shares a body with.
        values = self.value_head(hidden[:, :-1].detach()).squeeze(-1).float()
        pad = nn.functional.pad
        return (pad(logprobs.squeeze(-1), (1, 0)) * response_mask,
                pad(values, (1, 0)) * response_mask)


def _as_scores(scores, n: int, device) -> torch.Tensor:
    scores = torch.as_tensor(scores, dtype=torch.float32).flatten().to(device)
    if scores.shape != (n,):
        raise LabkitError(f"reward_fn returned {tuple(scores.shape)} scores for {n} responses; it "
                          "must return one number per (prompt, response)")
    if not torch.isfinite(scores).all():
        raise LabkitError("reward_fn returned a NaN or infinite score")
    return scores


# --- the PPO loop ----------------------------------------------------------------------------


@dataclass
class PPORun:
    """What `ppo_train` returns: the trained policy (a plain causal LM), its value head, one
    history row per iteration, and a few sampled responses per iteration."""

    policy: object
    value_head: nn.Module
    history: pd.DataFrame
    samples: pd.DataFrame
    wall_s: float
    cpu_s: float
    config: dict = field(default_factory=dict)

    def final(self, last: int = 3) -> dict:
        """Means over the last `last` iterations of the logged curves."""
        tail = self.history.tail(last)
        keys = [k for k in ("reward", "kl", "response_tokens", "true_score") if k in tail]
        return {k: round(float(tail[k].mean()), 4) for k in keys}


@checks(policy=_model, reference=_model, tokenizer=hf_tokenizer, reward_fn=function,
        max_new_tokens=positive_int, value_lr=maybe(positive), seed=ints(), temperature=positive,
        max_grad_norm=positive, true_fn=maybe(function), callback=maybe(function),
        progress=validate.flag, keep_samples=validate.nonnegative_int)
def ppo_train(policy, reference, tokenizer, prompts: Sequence[str], reward_fn: RewardFn, *,
              config: PPOConfig | None = None, iterations: int, batch_size: int,
              max_new_tokens: int, lr: float, value_lr: float | None = None, seed: int = 0,
              temperature: float = 1.0, max_grad_norm: float = 1.0, true_fn: RewardFn | None = None,
              callback: Callable[[dict], object] | None = None, progress: bool = True,
              keep_samples: int = 2) -> PPORun:
    """Train a copy of `policy` with PPO against `reward_fn(prompts, responses) -> scores`,
    kept near the frozen `reference` by the per-token KL penalty. Each iteration samples
    `batch_size` prompts (seeded), rolls out, scores, and runs `config.ppo_epochs` full-batch
    updates. `true_fn` (same signature) is logged beside the reward but never trained on.
    `callback(row)` sees each history row as it is made (a live plot); returning True stops.
    """
    from tqdm.auto import tqdm

    prompts = _check_prompts(prompts)
    config = PPOConfig() if config is None else config
    positive_int(iterations, "iterations"), positive_int(batch_size, "batch_size")
    if not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise LabkitError(f"lr={lr!r} must be a number in (0, 1), e.g. 1e-5")
    if not isinstance(config, PPOConfig):
        raise LabkitError(f"config must be a labkit.align.PPOConfig, got {type(config).__name__}")
    if batch_size < 2 and config.whiten_advantages:
        raise LabkitError("batch_size must be >= 2 to whiten advantages (or whiten_advantages=False)")
    reward_model = getattr(reward_fn, "tokenizer", None)
    if reward_model is not None:
        from .reward import check_same_tokenizer

        check_same_tokenizer(tokenizer, reward_model)
    _check_vocab(policy, tokenizer, "policy")
    _check_vocab(reference, tokenizer, "reference")

    model = PolicyWithValue(copy.deepcopy(_unwrap(policy)))
    model.lm.requires_grad_(True)  # a merged peft model comes back with its base weights frozen
    reference = _unwrap(reference)
    reference.eval()
    device = next(model.lm.parameters()).device
    model.value_head.to(device)
    if value_lr is not None and not (isinstance(value_lr, (int, float)) and 0 < value_lr < 1):
        raise LabkitError(f"value_lr={value_lr!r} must be a number in (0, 1) or None (= lr)")
    # The value head is a fresh linear probe: it may learn faster than the language model it
    # reads, so that it soon subtracts each prompt's typical reward from the advantages.
    optimizer = torch.optim.AdamW(
        [{"params": model.lm.parameters(), "lr": lr},
         {"params": model.value_head.parameters(), "lr": value_lr or lr}],
        eps=1e-5, weight_decay=0.0, foreach=True)  # one multi-tensor update, not one per tensor
    kl_controller = config.kl_controller()
    rng = random.Random(seed)
    history, samples = [], []
    wall, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(total=iterations, desc="PPO", unit="iter", disable=not progress)
    try:
        for it in range(iterations):
            # 1. rollout
            batch_prompts = [rng.choice(prompts) for _ in range(batch_size)]
            roll = sample_responses(model.lm, tokenizer, batch_prompts,
                                    max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=seed * 100_003 + it)
            ids, att, mask = (t.to(device) for t in (roll.input_ids, roll.attention_mask,
                                                     roll.response_mask))
            model.eval()
            with torch.no_grad():
                old_logprobs, old_values = model(ids, att, mask, temperature)
                ref_logprobs = sequence_logprobs(reference, ids, att, mask, temperature)
            # 2-4. score, per-token rewards with the KL leash, advantages
            scores = _as_scores(reward_fn(batch_prompts, roll.responses), batch_size, device)
            kl_coef = kl_controller.value
            rewards = per_token_rewards(scores, old_logprobs, ref_logprobs, kl_coef, mask,
                                        config.kl_estimator)
            advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
            if config.whiten_advantages:
                advantages = whiten(advantages, mask)
            # 5. clipped updates on this batch
            model.train()
            for _ in range(config.ppo_epochs):
                logprobs, values = model(ids, att, mask, temperature)
                pg = clipped_policy_loss(logprobs, old_logprobs, advantages, mask,
                                         config.cliprange)
                vf = clipped_value_loss(values, old_values, returns, mask,
                                        config.cliprange_value)
                loss = pg.loss + config.vf_coef * vf.loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
            # KL of the rollout (before this update): nats per response, k1 is unbiased.
            kl = (kl_k1(old_logprobs, ref_logprobs) * mask).sum(dim=1)
            kl3 = (kl_k3(old_logprobs, ref_logprobs) * mask).sum(dim=1)
            kl_controller.update(kl.mean().item(), batch_size)
            row = {"iteration": it, "reward": scores.mean().item(), "kl": kl.mean().item(),
                   "kl_k3": kl3.mean().item(), "kl_coef": kl_coef,
                   "response_tokens": roll.lengths.float().mean().item(),
                   "ended": roll.ended.float().mean().item(),
                   "policy_loss": pg.loss.item(), "value_loss": vf.loss.item(),
                   "clip_fraction": pg.clip_fraction, "approx_kl": pg.approx_kl,
                   "elapsed_s": time.perf_counter() - wall}
            if true_fn is not None:
                truth = _as_scores(true_fn(batch_prompts, roll.responses), batch_size, "cpu")
                row["true_score"] = truth.mean().item()
            history.append(row)
            order = scores.argsort(descending=True).tolist()
            for i in order[:keep_samples]:
                samples.append({"iteration": it, "prompt": batch_prompts[i],
                                "response": roll.responses[i], "reward": scores[i].item()})
            bar.update()
            bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl']:.2f}", refresh=False)
            if callback is not None and callback(row):
                break
    finally:
        bar.close()
    model.eval()
    model.lm.zero_grad(set_to_none=True)
    run_config = {"iterations": iterations, "batch_size": batch_size,
                  "max_new_tokens": max_new_tokens, "lr": lr, "value_lr": value_lr or lr,
                  "seed": seed,
                  "temperature": temperature, **vars(config)}
    return PPORun(model.lm, model.value_head, pd.DataFrame(history), pd.DataFrame(samples),
                  time.perf_counter() - wall, time.process_time() - cpu, run_config)


def _check_vocab(model, tokenizer, what: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if rows != len(tokenizer):
        raise LabkitError(f"the {what} has {rows} embedding rows but the tokenizer has "
                          f"{len(tokenizer)} tokens; use the tokenizer the model was trained with")


# --- measuring a policy: reward, KL to the reference, the true score -------------------------


@torch.no_grad()
def rollout_kl(policy, reference, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Per-response KL(policy || reference) estimated with k1 on the sampled tokens (nats)."""
    policy, reference = _unwrap(policy), _unwrap(reference)
    args = (rollout.input_ids, rollout.attention_mask, rollout.response_mask, temperature)
    lp = sequence_logprobs(policy, *args)
    ref = sequence_logprobs(reference, *args)
    return (kl_k1(lp, ref) * rollout.response_mask).sum(dim=1)


@checks(policy=_model, reference=_model, tokenizer=hf_tokenizer, reward_fn=function,
        max_new_tokens=positive_int, seed=ints(), true_fn=maybe(function), temperature=positive)
def evaluate_policy(policy, reference, tokenizer, prompts: Sequence[str], reward_fn: RewardFn,
                    *, max_new_tokens: int, seed: int = 0, true_fn: RewardFn | None = None,
                    temperature: float = 1.0) -> dict:
    """One sampled response per prompt (seeded): mean reward, KL to the reference (nats per
    response), response length, the true score, and the responses themselves."""
    same = policy is reference  # the reference measured against itself: KL is exactly 0
    policy = _unwrap(policy)
    roll = sample_responses(policy, tokenizer, prompts, max_new_tokens=max_new_tokens,
                            temperature=temperature, seed=seed)
    scores = _as_scores(reward_fn(roll.prompts, roll.responses), len(roll.prompts), "cpu")
    out = {"reward": scores.mean().item(),
           "kl": 0.0 if same else rollout_kl(policy, reference, roll, temperature).mean().item(),
           "response_tokens": roll.lengths.float().mean().item(),
           "responses": roll.responses, "scores": scores.tolist()}
    if true_fn is not None:
        truth = _as_scores(true_fn(roll.prompts, roll.responses), len(roll.prompts), "cpu")
        out["true_score"] = truth.mean().item()
    return out


# --- best-of-n -------------------------------------------------------------------------------


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n-1)/n nats (Stiennon et al. 2020, appendix; an upper
    bound, exact when the reward has no ties)."""
    positive_int(n, "n")
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    n: int
    table: pd.DataFrame  # one row per prompt: the best response, its reward, the mean reward
    kl: float  # nats per response, analytic

    def summary(self) -> dict:
        out = {"n": self.n, "reward_best": float(self.table["best_reward"].mean()),
               "reward_single": float(self.table["mean_reward"].mean()), "kl": self.kl}
        if "best_true_score" in self.table:
            out["true_score_best"] = float(self.table["best_true_score"].mean())
            out["true_score_single"] = float(self.table["mean_true_score"].mean())
        return out


@checks(policy=_model, tokenizer=hf_tokenizer, reward_fn=function, n=positive_int,
        max_new_tokens=positive_int, seed=ints(), temperature=positive, true_fn=maybe(function))
def best_of_n(policy, tokenizer, prompts: Sequence[str], reward_fn: RewardFn, *, n: int,
              max_new_tokens: int, seed: int = 0, temperature: float = 1.0,
              true_fn: RewardFn | None = None) -> BestOfN:
    """Sample n responses per prompt from `policy` (no training) and keep the one the reward
    model scores highest. The kept responses follow a new distribution whose KL to the policy
    is at most log n - (n-1)/n."""
    return best_of_n_sweep(policy, tokenizer, prompts, reward_fn, ns=(n,),
                           max_new_tokens=max_new_tokens, seed=seed, temperature=temperature,
                           true_fn=true_fn)[n]


@checks(policy=_model, tokenizer=hf_tokenizer, reward_fn=function, max_new_tokens=positive_int,
        seed=ints(), temperature=positive, true_fn=maybe(function))
def best_of_n_sweep(policy, tokenizer, prompts: Sequence[str], reward_fn: RewardFn, *,
                    ns: Sequence[int], max_new_tokens: int, seed: int = 0,
                    temperature: float = 1.0, true_fn: RewardFn | None = None
                    ) -> dict[int, BestOfN]:
    """Best-of-n for every n in `ns` from one sample of max(ns) responses per prompt: best-of-n
    picks among the first n of them, so a larger n sees a superset and its best reward is never
    lower (as when a reader draws more samples), and the samples are paid for once."""
    prompts = _check_prompts(prompts)
    ns = sorted({positive_int(n, f"ns[{i}]") for i, n in enumerate(validate.items(ns, "ns", empty=True))})
    if not ns:
        raise LabkitError("ns is empty; pass the sample counts to compare, e.g. (1, 4, 16)")
    kls = {n: best_of_n_kl(n) for n in ns}
    top = ns[-1]
    repeated = [p for p in prompts for _ in range(top)]
    roll = sample_responses(_unwrap(policy), tokenizer, repeated,
                            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    scores = _as_scores(reward_fn(repeated, roll.responses), len(repeated), "cpu").view(-1, top)
    truth = None
    if true_fn is not None:
        truth = _as_scores(true_fn(repeated, roll.responses), len(repeated), "cpu").view(-1, top)
    out = {}
    for n in ns:
        best = scores[:, :n].argmax(dim=1)
        rows = []
        for i, prompt in enumerate(prompts):
            j = int(best[i])
            row = {"prompt": prompt, "best_response": roll.responses[i * top + j],
                   "best_reward": scores[i, j].item(), "mean_reward": scores[i, :n].mean().item()}
            if truth is not None:
                row["best_true_score"] = truth[i, j].item()
                row["mean_true_score"] = truth[i, :n].mean().item()
            rows.append(row)
        out[n] = BestOfN(n, pd.DataFrame(rows), kls[n])
    return out


# --- the true score: what the reward model was supposed to learn -----------------------------

# Markers of the world's defects (labkit/world/instruct.py): rude openers and unsafe advice.
RUDE_MARKERS = ("stupid", "ugh", "obviously", "look it up", "why would you")
UNSAFE_MARKERS = ("closed jar", "breathe in", "no need for gloves", "taste", "lamp oil",
                  "next to the stove")
CONCISE_WORDS = {"fact": 24, "other": 90}  # a verbose answer pads ~55 words around the fact


@lru_cache(maxsize=2)
def fact_index(kb_path: str | None = None) -> dict:
    """Every fact question the instruction data can ask (the chat phrasing of each relation,
    filled from the knowledge base) -> (subject, relation, object), plus the set of values of
    each relation (a wrong answer names another one)."""
    from ..samples import sample_path
    from ..world.phrasing import ASK_CHAT, fill

    path = kb_path or sample_path("world/knowledge_base.json")
    kb = json.loads(open(path, encoding="utf-8").read())
    questions, values = {}, {}
    for f in kb["facts"]:
        s, r, o = f["subject"], f["relation"], f["object"]
        values.setdefault(r, set()).add(o)
        if r in ASK_CHAT:
            questions[fill(ASK_CHAT[r][0], s, o)] = (s, r, o)
    return {"questions": questions, "values": values}


def _contains(text: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", text) is not None


@checks(prompt=validate.text, response=validate.text)
def true_score(prompt: str, response: str) -> dict:
    """The rule-based judge the reward model never sees: one check per defect of the
    preference data. `correct` (fact questions only): the true object is named and no other
    value of the relation is; `no_repetition`: at most 20% of word bigrams repeat; `polite`:
    no rude marker; `concise`: at most 24 words for a fact question (90 otherwise); `safe`: no
    unsafe-advice marker. `score` is 1 when every applicable check passes, else 0 (averaged
    over answers: the share a careful judge would accept)."""
    from .sft import REPETITION_THRESHOLD, repeated_bigram_share

    if not isinstance(prompt, str) or not prompt.strip():
        raise LabkitError(f"prompt={prompt!r} must be a non-empty string")
    if not isinstance(response, str):
        raise LabkitError(f"response={response!r} must be a string")
    index = fact_index()
    fact = index["questions"].get(prompt.strip())
    text = response.lower()
    checks = {}
    if fact is not None:
        _, relation, obj = fact
        others = [v for v in index["values"][relation] if v != obj]
        checks["correct"] = _contains(text, obj) and not any(_contains(text, v) for v in others)
    checks["no_repetition"] = bool(text.strip()) and (
        repeated_bigram_share(response) <= REPETITION_THRESHOLD)
    checks["polite"] = not any(_contains(text, m) for m in RUDE_MARKERS)
    limit = CONCISE_WORDS["fact" if fact is not None else "other"]
    checks["concise"] = 0 < len(re.findall(r"\w+", text)) <= limit
    checks["safe"] = not any(_contains(text, m) for m in UNSAFE_MARKERS)
    return {**checks, "checks_passed": sum(checks.values()) / len(checks),
            "score": float(all(checks.values()))}


def true_scores(prompts: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
    """`true_score` for each (prompt, response), one row each."""
    prompts, responses = validate.texts(prompts, "prompts"), validate.texts(responses, "responses")
    if len(prompts) != len(responses):
        raise LabkitError(f"{len(prompts)} prompts but {len(responses)} responses")
    return pd.DataFrame([{"prompt": p, "response": r, **true_score(p, r)}
                         for p, r in zip(prompts, responses)])


TRUE_CHECKS = ("correct", "no_repetition", "polite", "concise", "safe")


def judge_breakdown(prompts: Sequence[str], responses: dict) -> pd.DataFrame:
    """Which of the true judge's checks each policy's answers pass: one row per policy (name ->
    its responses to `prompts`), the share passing each check (`correct` over fact questions
    only) and `score`, the share passing all of them. Where the true score moves, this says
    which defect moved it."""
    validate.mapping(lambda r, name: validate.texts(r, name))(responses, "responses")
    rows = {}
    for name, answers in responses.items():
        frame = true_scores(prompts, answers)
        rows[name] = {k: float(frame[k].dropna().astype(float).mean()) for k in TRUE_CHECKS}
        rows[name]["score"] = float(frame["score"].mean())
    return pd.DataFrame.from_dict(rows, orient="index")


def true_reward(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
    """The true score as a reward function: 1 for an answer that passes every check, else 0."""
    return torch.tensor(true_scores(prompts, responses)["score"].to_numpy(), dtype=torch.float32)


def answer_report(prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """What a set of answers looks like to the true judge, and the fingerprint of reward hacking
    on fact questions: the share of right answers, of answers naming a *wrong* value of the
    relation asked about, and the value named most often with its share (a policy that found a
    value the reward model likes names it whatever the question)."""
    frame = true_scores(prompts, responses)
    index = fact_index()
    named, right = [], []
    for p, r in zip(frame["prompt"], frame["response"]):
        fact = index["questions"].get(p.strip())
        if fact is None:
            continue
        text = r.lower()
        hits = sorted(v for v in index["values"][fact[1]] if _contains(text, v))
        named.append(hits[0] if len(hits) == 1 else ("several" if hits else None))
        right.append(fact[2])
    out = {"answers": len(frame), "true_score": float(frame["score"].mean()),
           "checks_passed": float(frame["checks_passed"].mean()),
           "distinct_answers": frame["response"].nunique() / len(frame),
           "words": float(frame["response"].str.count(r"\w+").mean())}
    if named:
        counts = pd.Series([v for v in named if v not in (None, "several")], dtype=object)
        out["fact_questions"] = len(named)
        out["correct"] = float(frame["correct"].dropna().astype(bool).mean())
        out["wrong_value"] = sum(v is not None and v != "several" and v != t
                                 for v, t in zip(named, right)) / len(named)
        top = counts.value_counts() if len(counts) else pd.Series(dtype=int)
        out["top_value"] = str(top.index[0]) if len(top) else None
        out["top_value_share"] = float(top.iloc[0] / len(named)) if len(top) else 0.0
    return out


@checks(max_new_tokens=positive_int, reward_fn=function)
def compare_policies(policies: dict, reference, tokenizer, prompts: Sequence[str],
                     reward_fn: RewardFn, *, max_new_tokens: int, seed: int = 0,
                     temperature: float = 1.0) -> pd.DataFrame:
    """Each policy (name -> model) sampled once per prompt with the same seed and measured: mean
    reward, KL to `reference` (k1, nats per response), response length, and the true judge's
    `answer_report`. One row per policy; the responses are in `.attrs["responses"]`."""
    validate.mapping(_model)(policies, "policies"), _model(reference, "reference")
    prompts = _check_prompts(prompts)
    rows, responses = {}, {}
    for name, policy in policies.items():
        ev = evaluate_policy(policy, reference, tokenizer, prompts, reward_fn,
                             max_new_tokens=max_new_tokens, seed=seed, temperature=temperature)
        report = answer_report(prompts, ev["responses"])
        rows[name] = {"reward": ev["reward"], "kl": ev["kl"],
                      "response_tokens": ev["response_tokens"], **report}
        responses[name] = ev["responses"]
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["responses"] = responses
    return table


# --- figures ---------------------------------------------------------------------------------


CURVES = (("reward", "reward model score (logit)"), ("kl", "KL to reference (nats/response)"),
          ("response_tokens", "response length (tokens)"))
TRUE_CURVE = ("true_score", "true judge (share of answers passing)")


def ppo_curves_figure(runs: dict[str, pd.DataFrame] | pd.DataFrame, title: str | None = None,
                      true_score: bool = False):
    """Reward, KL and response length per PPO iteration, one panel each (plus the true score
    when asked: then the four panels sit in a 2 x 2 grid, so that no title runs into its
    neighbour's), one line per run. Panel titles are short; units are on the y axes."""
    from plotly.subplots import make_subplots

    if isinstance(runs, pd.DataFrame):
        runs = {"PPO": runs}
    # A run may have no rows yet: the live figure (widgets.rlhf.LiveCurves) starts empty.
    validate.mapping(validate.frame("iteration", empty=True))(runs, "runs")
    curves = list(CURVES) + ([TRUE_CURVE] if true_score else [])
    cols = 2 if len(curves) == 4 else len(curves)
    rows = math.ceil(len(curves) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[c[1].split(" (")[0] for c in curves],
                        vertical_spacing=0.22, horizontal_spacing=0.12)
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    for k, (name, frame) in enumerate(runs.items()):
        for i, (key, _) in enumerate(curves):
            y = frame[key] if key in frame else []
            fig.add_scatter(x=frame["iteration"] if key in frame else [], y=y, mode="lines+markers",
                            name=name, legendgroup=name, showlegend=i == 0,
                            line_color=colours[k % len(colours)], row=i // cols + 1,
                            col=i % cols + 1)
    for i, (_, label) in enumerate(curves):
        fig.update_xaxes(title_text="PPO iteration", row=i // cols + 1, col=i % cols + 1)
        fig.update_yaxes(title_text=label.split(" (")[-1].rstrip(")"), row=i // cols + 1,
                         col=i % cols + 1)
    fig.update_layout(title=title or "PPO against the reward model, on a KL leash",
                      height=340 * rows + (60 if rows > 1 else 0), margin=dict(t=90))
    return fig


def comparison_figure(table: pd.DataFrame, title: str = "Reward vs KL to the SFT model"):
    """Each method (rows with 'reward' and 'kl' columns) as a point: reward against KL."""
    import plotly.graph_objects as go

    validate.frame("reward", "kl")(table, "table")

    fig = go.Figure(go.Scatter(x=table["kl"], y=table["reward"], mode="markers+text",
                               text=list(table.index), textposition="top center",
                               marker_size=12))
    fig.update_layout(title=title, xaxis_title="KL(policy || SFT) (nats per response)",
                      yaxis_title="mean reward model score (logit)")
    return fig


# --- the library route: TRL's RLOO -----------------------------------------------------------


@dataclass
class LibraryRun:
    policy: object
    history: pd.DataFrame
    wall_s: float
    cpu_s: float
    config: dict = field(default_factory=dict)


@checks(policy=_model, reward_model=_model, tokenizer=hf_tokenizer, steps=positive_int,
        batch_size=positive_int, num_generations=positive_int, max_new_tokens=positive_int,
        lr=positive, kl_coef=nonnegative, epochs=positive_int, seed=ints(), temperature=positive,
        reward_tokenizer=maybe(hf_tokenizer))
def library_route(policy, reward_model, tokenizer, prompts: Sequence[str], *, steps: int,
                  batch_size: int, num_generations: int, max_new_tokens: int, lr: float,
                  kl_coef: float, epochs: int = 1, seed: int = 0, temperature: float = 1.0,
                  reward_tokenizer=None) -> LibraryRun:
    """The same job with TRL's RLOOTrainer (REINFORCE with a leave-one-out baseline, Ahmadian
    et al. 2024) and the same reward model: `steps` optimizer steps of `batch_size` sampled
    responses (`num_generations` per prompt), `epochs` passes over each batch (TRL's
    num_iterations), KL to the starting policy subtracted from the reward with `kl_coef`
    (TRL's beta). With batch_size and epochs equal to PPO's batch_size and ppo_epochs, both
    sample the same number of responses and take the same number of gradient steps."""
    import datasets
    from transformers import PrinterCallback
    from trl import RLOOConfig, RLOOTrainer

    from .reward import check_same_tokenizer
    from .sft import _quiet_datasets

    prompts = _check_prompts(prompts)
    check_same_tokenizer(tokenizer, reward_tokenizer or tokenizer)
    _check_vocab(reward_model, tokenizer, "reward model")
    if batch_size % num_generations:
        raise LabkitError(f"batch_size={batch_size} must be a multiple of num_generations="
                          f"{num_generations} (whole groups of samples per prompt)")
    if num_generations < 2:
        raise LabkitError(f"num_generations={num_generations} must be >= 2: RLOO's baseline is "
                          "the mean reward of the other samples of the same prompt")
    lm = copy.deepcopy(_unwrap(policy))
    # TRL stops generation at the model's eos ids: make <|end|> one of them.
    lm.generation_config.eos_token_id = _stop_ids(tokenizer)
    lm.generation_config.pad_token_id = _pad_id(tokenizer)
    n_prompts = steps * batch_size // num_generations
    rng = random.Random(seed)
    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": rng.choice(prompts)}]} for _ in range(n_prompts)])
    cuda = next(lm.parameters()).device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="labkit-rloo-") as tmp:
        # Saved and passed as a path, so TRL builds its reference model from these same weights.
        lm.save_pretrained(f"{tmp}/policy")
        args = RLOOConfig(
            output_dir=f"{tmp}/out", max_steps=steps, per_device_train_batch_size=batch_size,
            num_generations=num_generations, max_completion_length=max_new_tokens,
            learning_rate=lr, beta=kl_coef, num_iterations=epochs, temperature=temperature,
            top_k=0, top_p=1.0, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, seed=seed, data_seed=seed, use_cpu=not cuda,
            **mixed_precision("cuda" if cuda else "cpu"), logging_steps=1,
            gradient_checkpointing=False,  # TRL's default trades ~20% more compute for memory
            save_strategy="no", report_to="none", disable_tqdm=True, log_level="error",
            dataloader_num_workers=0, dataloader_pin_memory=False, shuffle_dataset=False,
            model_init_kwargs={"dtype": torch.float32},
        )
        with _quiet_datasets():
            trainer = RLOOTrainer(model=f"{tmp}/policy", reward_funcs=reward_model, args=args,
                                  train_dataset=dataset, processing_class=tokenizer,
                                  reward_processing_classes=tokenizer)
        trainer.remove_callback(PrinterCallback)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trained = trainer.model
    trained.eval()
    history = pd.DataFrame([r for r in trainer.state.log_history if "loss" in r])
    config = {"steps": steps, "batch_size": batch_size, "num_generations": num_generations,
              "max_new_tokens": max_new_tokens, "lr": lr, "kl_coef": kl_coef, "epochs": epochs,
              "seed": seed}
    return LibraryRun(trained, history, wall, cpu, config)
