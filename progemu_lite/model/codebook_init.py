"""Start a fresh decoder's visual-token embeddings from the VQ codebook (``train
--visual-token-init codebook``).

A fresh ``Emu3ForConditionalGeneration`` draws one independent random embedding per visual
token, so the decoder must learn from data alone that code 17 and code 803 draw nearly the same
8x8 patch. The ``vq-probe`` measurements (docs/model_card.md) say that this is hard: a small CNN
reading the lite priors' codes through embeddings learnt from scratch found 57% of the stable
findings, while the same CNN reading them through the codebook's own vectors found 77%, nearly
as many as from the pixels (79%). This module gives each visual token's input and
output embedding rows the codebook's geometry instead: its VQ vector, standardised per dimension,
through a fixed random projection to the decoder's width, at the decoder's initialiser scale.
Codes that look alike then start with embeddings alike; training moves every row freely from
there. Only the initial values change; the model is the same transformers class.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from progemu_lite.tokenization.text import TokenIds

VISUAL_TOKEN_INITS = ("random", "codebook")


def codebook_rows(codebook: torch.Tensor, width: int, std: float, generator) -> torch.Tensor:
    """``(codebook_size, width)`` float32 rows: the codebook vectors, standardised per dimension,
    times a Gaussian ``(dim, width)`` projection scaled so each entry has standard deviation
    about ``std``."""
    import torch

    vectors = codebook.detach().float()
    vectors = (vectors - vectors.mean(0)) / vectors.std(0).clamp_min(1e-8)
    projection = torch.randn(vectors.shape[1], width, generator=generator)
    return vectors @ projection * (std / math.sqrt(vectors.shape[1]))


def init_visual_tokens_from_codebook(model, ids: TokenIds, seed: int = 0) -> None:
    """Overwrite the visual-token rows of ``model``'s input embedding and (if not tied to it)
    output projection with :func:`codebook_rows` of its VQ's codebook, in place."""
    import torch

    codebook = model.model.vqmodel.quantize.embedding.weight
    if codebook.shape[0] != ids.codebook_size:
        raise ValueError(
            f"the VQ has {codebook.shape[0]} codes but the tokenizer {ids.codebook_size} "
            "visual tokens"
        )
    std = model.config.get_text_config().initializer_range
    rows = slice(ids.visual_offset, ids.visual_offset + ids.codebook_size)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings().weight
    if output.data_ptr() != matrices[0].data_ptr():  # untied: the output side gets its own
        matrices.append(output)
    for index, matrix in enumerate(matrices):
        generator = torch.Generator().manual_seed(seed * 2 + index)
        values = codebook_rows(codebook, matrix.shape[1], std, generator)
        with torch.no_grad():
            matrix[rows] = values.to(matrix.dtype)
