"""train --visual-token-init codebook: a fresh decoder's visual-token embeddings start from the
VQ codebook (progemu_lite.model.codebook_init)."""

import pytest
import torch

from progemu_lite.model.codebook_init import codebook_rows, init_visual_tokens_from_codebook
from progemu_lite.model.pipeline import build_random


def _fit_residual(rows: torch.Tensor, codebook: torch.Tensor) -> float:
    """Share of ``rows``' variance a linear map of the codebook vectors (+ bias) leaves."""
    x = torch.cat([codebook.double(), torch.ones(len(codebook), 1, dtype=torch.float64)], 1)
    y = rows.double()
    residual = y - x @ torch.linalg.lstsq(x, y).solution
    return float((residual**2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_visual_rows_take_the_codebooks_geometry():
    pipe = build_random("tiny", seed=0)
    model, ids = pipe.model, pipe.builder.ids
    codebook = model.model.vqmodel.quantize.embedding.weight.detach().clone()
    embeddings = model.get_input_embeddings().weight
    output = model.get_output_embeddings().weight
    before_in, before_out = embeddings.detach().clone(), output.detach().clone()
    visual = slice(ids.visual_offset, ids.visual_offset + ids.codebook_size)
    assert _fit_residual(before_in[visual], codebook) > 0.5  # random rows: no relation

    init_visual_tokens_from_codebook(model, ids, seed=0)
    for matrix in (embeddings, output):
        rows = matrix.detach()[visual]
        assert _fit_residual(rows, codebook) < 1e-6  # exactly a linear map of the codebook
        # Codes close in the codebook are close in the embedding (pairwise distances agree).
        code_distances = torch.pdist(codebook.double())
        row_distances = torch.pdist(rows.double())
        assert torch.corrcoef(torch.stack([code_distances, row_distances]))[0, 1] > 0.5
        std = model.config.get_text_config().initializer_range
        assert 0.5 * std < float(rows.std()) < 2 * std  # the decoder's initialiser scale
    assert not torch.allclose(embeddings.detach()[visual], output.detach()[visual])
    # Text and special tokens keep their rows.
    text = slice(0, ids.visual_offset)
    assert torch.equal(embeddings.detach()[text], before_in[text])
    assert torch.equal(output.detach()[text], before_out[text])
    # The same seed gives the same rows.
    again = build_random("tiny", seed=0)
    init_visual_tokens_from_codebook(again.model, again.builder.ids, seed=0)
    assert torch.equal(again.model.get_input_embeddings().weight, embeddings)


def test_codebook_rows_refuse_a_mismatched_tokenizer():
    pipe = build_random("tiny", seed=0)
    wrong = type(pipe.builder.ids)(**{**vars(pipe.builder.ids), "codebook_size": 3})
    with pytest.raises(ValueError, match="VQ has 256 codes but the tokenizer 3 visual tokens"):
        init_visual_tokens_from_codebook(pipe.model, wrong)
    rows = codebook_rows(torch.randn(10, 4), 32, 0.02, torch.Generator().manual_seed(0))
    assert rows.shape == (10, 32) and rows.dtype == torch.float32
