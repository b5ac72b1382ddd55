"""Alignment (labs 07 RLHF and 08 DPO): preference losses and the pieces of PPO.

`preference_losses` holds the Bradley-Terry reward-model loss and the DPO family (DPO, IPO,
hinge, KTO, ORPO, SimPO) written from per-sequence log-probs; `ppo` holds the KL estimators,
per-token rewards, GAE, whitening, the clipped policy and value losses, the KL controllers and
`sequence_logprobs`, which turns a causal LM and a batch into the log-probs all of them use.
"""

from .dpo import (
    DPO_ADAPTER_RECIPE,
    METHODS,
    PairScores,
    PreferenceRun,
    beta_sweep,
    beta_sweep_figure,
    build_dpo_adapter,
    comparison_table,
    preference_accuracy,
    preference_accuracy_figure,
    preference_dataset,
    score_pairs,
    train_preference,
    training_curves_figure,
    trl_cross_check,
    unpaired_dataset,
    validate_pairs,
)
from .ppo import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    PolicyLoss,
    PPOConfig,
    ValueLoss,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_k1,
    kl_k2,
    kl_k3,
    last_token_index,
    masked_mean,
    per_token_rewards,
    sequence_logprobs,
    whiten,
)
from .preference_losses import (
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    implicit_rewards,
    ipo_loss,
    kto_loss,
    mismatched_completions,
    orpo_loss,
    simpo_loss,
)
from .reward import (
    RewardRun,
    annotation_agreement,
    annotation_batch,
    check_same_tokenizer,
    reward_accuracy,
    reward_distribution_figure,
    reward_function,
    reward_model_from,
    reward_scores,
    reward_training_figure,
    score_reward_pairs,
    train_reward_model,
)
from .rlhf import (
    BestOfN,
    LibraryRun,
    PolicyWithValue,
    PPORun,
    Rollout,
    answer_report,
    best_of_n,
    best_of_n_kl,
    best_of_n_sweep,
    compare_policies,
    comparison_figure,
    evaluate_policy,
    judge_breakdown,
    library_route,
    ppo_curves_figure,
    ppo_train,
    sample_responses,
    true_reward,
    true_score,
    true_scores,
)
from .sft import (
    ChatLabels,
    SFTRun,
    accuracy_figure,
    answer,
    assistant_mask,
    build_sft_adapter,
    chat_token_ids,
    compact_summary,
    conversation_loss,
    evaluate_answers,
    generate_answers,
    judge,
    lora_config,
    loss_by_part,
    loss_curves_figure,
    loss_mask_figure,
    loss_token_share,
    merge_lora,
    parameter_table,
    render_chat,
    repeated_bigram_share,
    sft_train,
    side_by_side,
    summarize_answers,
)

# Sizes and step counts per scale profile; the SFT, RLHF and DPO labs add their keys here.
SETTINGS = {"cpu": {}, "gpu": {}}

# Lab 06 (SFT): every short run sees sft_steps x sft_batch conversations. On CPU that is a few
# seconds per run; the learning rates are for the 3M-parameter base model (LoRA takes ~5x).
SETTINGS["cpu"].update({
    "sft_steps": 16, "sft_batch": 8, "sft_warmup": 2, "sft_lr": 2e-3,
    "lora_r": 8, "lora_alpha": 16, "lora_lr": 1e-2,
    "eval_questions": 60,  # of the 184 held-out world questions
    "max_new_tokens": 32,  # per answer; a one-sentence answer needs about 15
    # LIMA (section 5): this many curated conversations, seen sft_steps x sft_batch / curated_small
    # times each, against draws from the whole noisy set (10,000) at the same steps.
    "curated_small": 32,
})
SETTINGS["gpu"].update({
    "sft_steps": 300, "sft_batch": 16, "sft_warmup": 20, "sft_lr": 1e-3,
    "lora_r": 16, "lora_alpha": 32, "lora_lr": 5e-3,
    "eval_questions": 184,  # all of them
    "max_new_tokens": 40,
    "curated_small": 1000,  # LIMA's own count: the whole curated set, ~5 times over
})

# Lab 08 (DPO and alternatives): every method trains pref_steps x pref_batch pairs (KTO: the same
# pairs as 2 x pref_batch single answers) with LoRA from the SFT model. On CPU the five methods,
# the beta grid and their held-out scoring take most of the lab; lr is for LoRA on the 3M model.
SETTINGS["cpu"].update({
    "pref_steps": 6, "pref_batch": 4, "pref_lr": 2e-3,
    "pref_eval_pairs": 60,  # held-out pairs scored per model (of ~600)
    "pref_betas": (0.02, 0.1, 0.5),  # the beta widget's grid; 0.1 is reused from section 2
    "pref_sweep_pairs": 32,  # held-out pairs behind each beta's margin, KL and accuracy
})
SETTINGS["gpu"].update({
    "pref_steps": 200, "pref_batch": 16, "pref_lr": 1e-3,
    "pref_eval_pairs": 1000,  # all of them
    "pref_betas": (0.01, 0.03, 0.1, 0.3, 1.0),
    "pref_sweep_pairs": 1000,
})

# Lab 07 (RLHF): the reward model trains rm_steps x rm_batch pairs (TRL RewardTrainer, top
# rm_train_layers decoder layers and the head); PPO runs ppo_iterations rollouts of ppo_batch
# answers to ppo_prompts practice questions, ppo_epochs clipped updates each. The CPU run is 96
# answers, so its learning rate is high (drift is fast, and so is hacking without the leash);
# scores are reward-model logits spanning ~10, so the KL coefficient is far above InstructGPT's
# 0.05 on a normalised reward. Four clipped epochs per batch, as at 23f4454: with two (tried to
# save ~3 CPU s) PPO's reward gain and the unleashed run's loss of true score shrank 2-4x across
# CPUs, though every claim still held; epochs are what a CPU run pays for. RLOO samples as many
# answers and takes rloo_epochs gradient steps per batch (TRL's default, one), at its own rate:
# its advantages are raw leave-one-out reward differences, not whitened as PPO's are.
SETTINGS["cpu"].update({
    "rm_steps": 30, "rm_batch": 8, "rm_lr": 1e-3, "rm_train_layers": 2,
    "rm_eval_pairs": 150,  # held-out pairs (of 596) for the accuracy per defect
    "annotate_pairs": 5,
    "ppo_prompts": 16, "ppo_iterations": 12, "ppo_batch": 8, "ppo_epochs": 4,
    "ppo_lr": 2e-4, "ppo_value_lr": 1e-3, "ppo_max_new_tokens": 16,
    "ppo_kl_coef": 2.0, "ppo_kl_target": 8.0,  # nats per response (Ziegler et al.: 6)
    "eval_samples": 4,  # answers per prompt when policies are compared
    "bon_ns": (1, 4, 16), "rloo_generations": 4, "rloo_epochs": 1, "rloo_lr": 2e-4,
})
SETTINGS["gpu"].update({
    "rm_steps": 300, "rm_batch": 16, "rm_lr": 5e-4, "rm_train_layers": None,
    "rm_eval_pairs": 596,
    "annotate_pairs": 10,
    "ppo_prompts": 128, "ppo_iterations": 200, "ppo_batch": 32, "ppo_epochs": 4,
    "ppo_lr": 1e-5, "ppo_value_lr": 1e-3, "ppo_max_new_tokens": 32,
    "ppo_kl_coef": 2.0, "ppo_kl_target": 8.0,
    "eval_samples": 4,
    "bon_ns": (1, 4, 16, 64), "rloo_generations": 4, "rloo_epochs": 4, "rloo_lr": 1e-5,
})

__all__ = [
    "DPO_ADAPTER_RECIPE",
    "KL_ESTIMATORS",
    "METHODS",
    "SETTINGS",
    "AdaptiveKLController",
    "ChatLabels",
    "FixedKLController",
    "PPOConfig",
    "PairScores",
    "PolicyLoss",
    "PreferenceLoss",
    "PreferenceRun",
    "SFTRun",
    "ValueLoss",
    "accuracy_figure",
    "answer",
    "assistant_mask",
    "beta_sweep",
    "beta_sweep_figure",
    "bradley_terry_loss",
    "build_dpo_adapter",
    "build_sft_adapter",
    "chat_token_ids",
    "clipped_policy_loss",
    "clipped_value_loss",
    "compact_summary",
    "comparison_table",
    "conversation_loss",
    "dpo_loss",
    "evaluate_answers",
    "gae",
    "generate_answers",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "judge",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kto_loss",
    "last_token_index",
    "lora_config",
    "loss_by_part",
    "loss_curves_figure",
    "loss_mask_figure",
    "loss_token_share",
    "masked_mean",
    "merge_lora",
    "mismatched_completions",
    "orpo_loss",
    "parameter_table",
    "per_token_rewards",
    "preference_accuracy",
    "preference_accuracy_figure",
    "preference_dataset",
    "render_chat",
    "repeated_bigram_share",
    "score_pairs",
    "sequence_logprobs",
    "sft_train",
    "side_by_side",
    "simpo_loss",
    "summarize_answers",
    "train_preference",
    "training_curves_figure",
    "trl_cross_check",
    "unpaired_dataset",
    "validate_pairs",
    "whiten",
    "RewardRun",
    "annotation_agreement",
    "annotation_batch",
    "check_same_tokenizer",
    "reward_accuracy",
    "reward_distribution_figure",
    "reward_function",
    "reward_model_from",
    "reward_scores",
    "reward_training_figure",
    "score_reward_pairs",
    "train_reward_model",
    "BestOfN",
    "LibraryRun",
    "PolicyWithValue",
    "PPORun",
    "Rollout",
    "answer_report",
    "best_of_n",
    "best_of_n_kl",
    "best_of_n_sweep",
    "compare_policies",
    "comparison_figure",
    "evaluate_policy",
    "judge_breakdown",
    "library_route",
    "ppo_curves_figure",
    "ppo_train",
    "sample_responses",
    "true_reward",
    "true_score",
    "true_scores",
]
