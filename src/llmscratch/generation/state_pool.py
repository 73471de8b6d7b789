"""The fixed-size states of Gated DeltaNet layers, one slot per running sequence.

Legend: P slots, B sequences in the step, C convolved channels, K the
convolution's length, Hv value heads, Dk key width, Dv value width.

An attention layer's cache grows with the text, so the engine keeps it in
blocks (block_manager.py). A Gated DeltaNet layer (Qwen3-Next, Qwen3.5:
model/linear_attention.py) keeps instead, per sequence, the same amount
whatever the length: the last K - 1 inputs of its convolution (C, K - 1)
and its memory, one matrix per value head (Hv, Dk, Dv), rewritten by every
token. So the engine keeps these states beside the block pool, in a pool of
P slots preallocated once per linear layer:

    conv[layer]     (P, C, K - 1)     in the model's dtype
    memory[layer]   (P, Hv, Dk, Dv)   in fp32, as the recurrence runs

A sequence takes a slot when it is admitted (emptied: a sequence starts from
zero state) and gives it back when it finishes, is aborted or is preempted;
the block manager does both, with its blocks. A preempted sequence is
computed again from its first token (scheduler.py), so nothing in its slot is
worth keeping: it gets an empty slot, perhaps another, when it runs again.

In a step, each linear layer reads the slots of the step's sequences
(`StepBatch.recur`, paged_cache.py): a decode step gathers all B states,
runs the recurrence for the B tokens at once and writes them back; a
prefill step runs each prompt alone, chunked, from (and into) its own slot,
so each packed prompt starts from its own state and none sees another's.

Prefix caching is off for these models (`NO_PREFIX_CACHING`): a block of
keys says everything about its positions that an attention layer needs, but
a linear layer's state after a shared prefix is not in any block, and the
pool keeps one state per sequence, the latest, not one per block boundary.
Reusing the attention layers' blocks alone would skip the linear layers'
work on the prefix, and their state would be wrong.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from llmscratch.model.config import ModelConfig
from llmscratch.model.linear_attention import state_shapes

NO_PREFIX_CACHING = ("prefix caching is off: this model's Gated DeltaNet layers keep one state "
                     "per sequence, not one per block, so a shared prefix is computed again")


@dataclass
class LayerStates:
    """Some sequences' states of one linear layer, as the model's dense cache holds them
    (model/kv_cache.py: `conv_states` and `recurrent_states` by layer): the layer reads
    them and rewrites them in place."""

    conv_states: dict[int, torch.Tensor]  # {layer: (B, C, K - 1)}
    recurrent_states: dict[int, torch.Tensor]  # {layer: (B, Hv, Dk, Dv)} fp32


class StatePool:
    """Every linear layer's states for `slots` sequences, and which slots are free."""

    def __init__(self, config: ModelConfig, slots: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        conv_shape, memory_shape = state_shapes(config, slots)
        layers = [i for i in range(config.n_layer) if config.layer_is_linear(i)]
        self.conv = {i: torch.zeros(conv_shape, dtype=dtype, device=device) for i in layers}
        self.memory = {i: torch.zeros(memory_shape, dtype=torch.float32, device=device)
                       for i in layers}
        self.slots = slots
        self.free: deque[int] = deque(range(slots))

    @property
    def used(self) -> int:
        return self.slots - len(self.free)

    def bytes_per_slot(self) -> int:
        """Memory one sequence's states take, every linear layer's."""
        return sum(t[0].numel() * t.element_size()
                   for t in [*self.conv.values(), *self.memory.values()])

    def allocate(self) -> int:
        """A free slot, emptied: the state of a sequence before its first token."""
        slot = self.free.popleft()
        for tensor in [*self.conv.values(), *self.memory.values()]:
            tensor[slot].zero_()
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def view(self, layer: int, slot: int) -> LayerStates:
        """One sequence's states of a layer, as views: the layer rewrites the slot itself."""
        return LayerStates({layer: self.conv[layer][slot:slot + 1]},
                           {layer: self.memory[layer][slot:slot + 1]})

    def gather(self, layer: int, slots: torch.Tensor) -> LayerStates:
        """Copies of B sequences' states of a layer, in the order of `slots` (B,)."""
        return LayerStates({layer: self.conv[layer].index_select(0, slots)},
                           {layer: self.memory[layer].index_select(0, slots)})

    def scatter(self, layer: int, slots: torch.Tensor, states: LayerStates) -> None:
        """Write B sequences' states of a layer (from `gather`, rewritten) back to their slots."""
        self.conv[layer].index_copy_(0, slots, states.conv_states[layer])
        self.memory[layer].index_copy_(0, slots, states.recurrent_states[layer])
