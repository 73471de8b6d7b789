"""The decoder-only transformer (nn only): config, attention, KV cache, model, heads."""

from llmscratch.model.config import PRESETS, ModelConfig, get_preset
from llmscratch.model.heads import SequenceHead
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.transformer import GPT

__all__ = ["GPT", "KVCache", "ModelConfig", "PRESETS", "SequenceHead", "get_preset"]
