"""Deepen a trained decoder without changing what it computes (depth up-scaling).

A decoder layer adds two residual branches to its input: attention (ending in ``o_proj``) and the
MLP (ending in ``down_proj``). A copy of a trained layer whose two output projections are zero
adds nothing, so inserting such copies gives a deeper model with exactly the same logits. Training
then goes on from the smaller model's quality instead of from scratch: the copies start from
trained weights (their other projections), and their output projections get gradients at once.

Used by ``progemu-lite train --init PIPELINE --grow-layers N``; the model card records what it
did for the lite model (4 -> 6 layers).
"""

from __future__ import annotations

import copy
import math


def copy_sources(num_layers: int, target: int) -> list[int]:
    """Which layers are copied to go from ``num_layers`` to ``target``, spread evenly over the
    depth (4 -> 6 copies layers 1 and 3; 4 -> 8 copies every layer once)."""
    if target <= num_layers:
        raise ValueError(
            f"--grow-layers {target} must be more than the decoder's {num_layers} layers"
        )
    extra = target - num_layers
    return [math.ceil((k + 1) * num_layers / extra) - 1 for k in range(extra)]


def grow_decoder_depth(model, target: int) -> list[int]:
    """Insert zero-output copies into ``model``'s text decoder (an ``Emu3ForConditionalGeneration``)
    until it has ``target`` layers; returns the new layers' positions. The logits do not change."""
    import torch

    text_model = model.model.text_model
    layers = text_model.layers
    sources = copy_sources(len(layers), target)
    grown = torch.nn.ModuleList()
    added = []
    for index, layer in enumerate(layers):
        grown.append(layer)
        for _ in range(sources.count(index)):
            twin = copy.deepcopy(layer)
            for projection in (twin.self_attn.o_proj, twin.mlp.down_proj):
                torch.nn.init.zeros_(projection.weight)
                if projection.bias is not None:
                    torch.nn.init.zeros_(projection.bias)
            added.append(len(grown))
            grown.append(twin)
    for index, layer in enumerate(grown):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by it
    text_model.layers = grown
    # The decoder runs layers[: config.num_hidden_layers]; the saved config.json must say it too.
    text_model.config.num_hidden_layers = target
    model.config.text_config.num_hidden_layers = target  # often the same object
    return added
