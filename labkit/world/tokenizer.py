"""The world's byte-level BPE tokenizer (HF `tokenizers`) with a chat template for TRL.

The template wraps assistant turns in {% generation %} ... {% endgeneration %}, which is how
TRL's `assistant_only_loss=True` finds the tokens that carry the loss.
"""

from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|mask|>", "<|system|>", "<|user|>",
                  "<|assistant|>", "<|end|>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'user' -%}<|user|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def train_tokenizer(texts, vocab_size: int = 4096, max_len: int = 256):
    """Train the tokenizer on `texts` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|pad|>", mask_token="<|mask|>", unk_token=None,
        model_max_length=max_len,
        extra_special_tokens={"system_token": "<|system|>", "user_token": "<|user|>",
                              "assistant_token": "<|assistant|>", "end_token": "<|end|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
