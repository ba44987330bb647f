"""The small decoder trained in the real runs: a randomly initialised ``transformers`` Qwen2 model.

The model stays pure: context parallelism is applied from outside by registering DACP attention
(:mod:`components.skrull.context_parallel`) as a ``transformers`` attention implementation and
passing each rank's :class:`~components.skrull.context_parallel.RankLayout` through the forward's
keyword arguments. No weights are downloaded: the model is built from a config and a seed.
"""
from __future__ import annotations

from typing import Any, Mapping

ATTN_IMPLEMENTATION = "skrull_dacp"


def qwen2_config(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int,
                 num_kv_heads: int, vocab_size: int, max_positions: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
                       tie_word_embeddings=False, use_cache=False, attention_dropout=0.0)


def build_model(model_cfg: Mapping[str, Any], vocab_size: int, max_positions: int, seed: int,
                dtype=None):
    """A randomly initialised Qwen2ForCausalLM using DACP attention (same seed → same weights)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from components.skrull.context_parallel import register_dacp_attention

    register_dacp_attention(ATTN_IMPLEMENTATION)
    cfg = qwen2_config(model_cfg["hidden_size"], model_cfg["intermediate_size"], model_cfg["num_layers"],
                       model_cfg["num_heads"], model_cfg["num_kv_heads"], vocab_size, max_positions)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    if dtype is not None:
        model = model.to(dtype)
    return model


def head_dim(model_cfg: Mapping[str, Any]) -> int:
    return model_cfg["hidden_size"] // model_cfg["num_heads"]
