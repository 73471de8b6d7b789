"""Generation: sampling, and an engine that serves many requests at once.

    sampling.py        temperature, top-k, top-p; the single-request KV-cached loop
    sequence.py        one request inside the engine
    block_manager.py   the paged KV cache's blocks: block tables, prefix sharing, free list
    paged_cache.py     the cache's memory, and the per-step view the model attends over
    state_pool.py      Gated DeltaNet layers' fixed-size states, a slot per running sequence
    scheduler.py       continuous batching: who runs each step; preemption
    engine.py          Engine: one step = schedule, one forward pass, sample, finish
    speculative.py     speculative decoding: cheap drafts the model checks in one pass
"""

from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig, generate, generate_tokens, sample_next

__all__ = ["Engine", "SamplingConfig", "generate", "generate_tokens", "sample_next"]
