"""The decoder-only transformer: config, attention, KV cache, model.

`GPT` and `KVCache` are imported on first use (PEP 562 `__getattr__`), so
code that only needs the config (the tokenizer and data commands reading a
run config) starts without loading torch.
"""

from llmscratch.model.config import PRESETS, ModelConfig, get_preset

__all__ = ["GPT", "KVCache", "ModelConfig", "PRESETS", "get_preset"]


def __getattr__(name: str):
    if name == "GPT":
        from llmscratch.model.transformer import GPT

        return GPT
    if name == "KVCache":
        from llmscratch.model.kv_cache import KVCache

        return KVCache
    raise AttributeError(f"module 'llmscratch.model' has no attribute {name!r}")
