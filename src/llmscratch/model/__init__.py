"""The decoder-only transformer: config, attention, KV cache, model."""

from llmscratch.model.config import PRESETS, ModelConfig, get_preset
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.transformer import GPT

__all__ = ["GPT", "KVCache", "ModelConfig", "PRESETS", "get_preset"]
