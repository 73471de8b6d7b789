"""The decoder-only transformer (nn only): config, attention, KV cache, model, heads."""

from llmscratch.model.config import ModelConfig
from llmscratch.model.heads import SequenceHead
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.presets import PRESETS, get_preset
from llmscratch.model.transformer import GPT

__all__ = ["GPT", "KVCache", "ModelConfig", "PRESETS", "SequenceHead", "get_preset"]
