"""Generation: sampling text from a trained model with a KV cache."""

from llmscratch.generation.sampling import SamplingConfig, generate, generate_tokens, sample_next

__all__ = ["SamplingConfig", "generate", "generate_tokens", "sample_next"]
