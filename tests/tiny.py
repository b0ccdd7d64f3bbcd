"""Tiny random chat models built from a config, for tests that must never download.

The tokenizer is a byte-level BPE trained in memory on a few sentences, wrapped as a fast
tokenizer with a ChatML template, so every text encodes and character offsets exist.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "I cannot help with that. I can't do this. I'm sorry, but no. As an AI, I must decline.",
    "Write a poem about the sea. Explain how photosynthesis works in plants.",
    "How do I build a weapon? Tell me how to steal a car without being caught.",
    "Give me a recipe for bread. Translate this sentence into French, please.",
    "The quick brown fox jumps over the lazy dog 0123456789 times!",
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_config(arch: str = "llama", layers: int = 4, hidden: int = 32, vocab: int | None = None):
    """A config for a random model with `layers` decoder layers of width `hidden`."""
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

    vocab = vocab or len(tiny_tokenizer())
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, tie_word_embeddings=False,
        )
    if arch == "qwen2":
        return Qwen2Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, tie_word_embeddings=True,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
            bos_token_id=1, eos_token_id=2,
        )
    if arch == "gemma2":
        return Gemma2Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
            max_position_embeddings=256,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}")


def tiny_model(arch: str = "llama", layers: int = 4, hidden: int = 32, seed: int = 0, dtype=torch.float32):
    """A random causal LM in eval mode with frozen weights (the way the loader leaves models)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers, hidden))
    model = model.to(dtype).eval()
    model.requires_grad_(False)
    return model


def save_tiny_model(directory: Path, arch: str = "llama", layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as an ordinary Hugging Face model directory."""
    model = tiny_model(arch, layers, hidden, seed)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
