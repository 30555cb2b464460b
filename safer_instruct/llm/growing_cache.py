"""A KV cache that grows in place: a decoding step writes one position per row instead of copying the cache.

transformers' ``DynamicLayer`` concatenates, so each step of a batch's decoding copies every layer's keys and values
whole (``bench/local_generation.py --sides concatenating,continuous`` times the two).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes each update into room kept free behind its keys and values.

    The room is enlarged (one copy) every ``ROOM`` positions, and after something put other tensors in place of the
    keys or values (a compaction, a join of two batches); a crop keeps the same storage, and the next update writes
    over what it cut.
    """

    ROOM = 32

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._writable(end):
            self._room = (self._enlarged(self.keys, key_states, end), self._enlarged(self.values, value_states, end))
        keys, values = self._room
        keys[..., length:end, :] = key_states
        values[..., length:end, :] = value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        return self.keys, self.values

    def _writable(self, end: int) -> bool:
        """Whether the keys and values still begin the room, and the room holds ``end`` positions."""
        room = getattr(self, "_room", None)
        return room is not None and all(
            held.data_ptr() == free.data_ptr()
            and held.shape[:-2] == free.shape[:-2]
            and held.stride() == free.stride()
            and end <= free.shape[-2]
            for held, free in zip((self.keys, self.values), room)
        )

    def _enlarged(self, held: torch.Tensor, new: torch.Tensor, end: int) -> torch.Tensor:
        """Room for ``end + ROOM`` positions shaped like ``new``, beginning with what ``held`` holds."""
        room = new.new_empty((*new.shape[:-2], end + self.ROOM, new.shape[-1]))
        if held.numel():
            room[..., : held.shape[-2], :] = held
        return room


def growing_cache(model_config) -> DynamicCache:
    """A ``DynamicCache`` for ``model_config`` whose plain layers grow in place (sliding-window layers stay)."""
    cache = DynamicCache(config=model_config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
