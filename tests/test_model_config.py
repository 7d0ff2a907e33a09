import pytest
import torch

from progemu_lite.model.config import build_config, build_model, config_mismatches
from progemu_lite.tokenization.text import TokenIds, train_text_tokenizer, vocabulary_corpus
from progemu_lite.tokenization.vq import vq_config


def _tokenizer(preset):
    return train_text_tokenizer(
        vocabulary_corpus(), vq_config(preset).codebook_size, vocab_size=512
    )


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return _tokenizer("tiny")


def test_tiny_config_carries_the_tokenizer(tiny_tokenizer):
    config = build_config("tiny", tiny_tokenizer)
    ids = TokenIds.from_tokenizer(tiny_tokenizer)
    text = config.text_config
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == (ids.pad, ids.bos, ids.eos)
    assert text.attention_dropout == 0.0
    assert text.vocab_size == len(tiny_tokenizer)
    assert config.vocabulary_map == tiny_tokenizer.get_vocab()
    assert config.image_token_id == ids.placeholder
    assert config.vq_config.codebook_size == ids.codebook_size
    assert config_mismatches(config, "tiny", tiny_tokenizer) == []


def test_tiny_model_is_transformers_emu3_and_maps_visual_tokens(tiny_tokenizer):
    from transformers import Emu3ForConditionalGeneration

    model = build_model("tiny", tiny_tokenizer)
    ids = TokenIds.from_tokenizer(tiny_tokenizer)
    assert isinstance(model, Emu3ForConditionalGeneration) and not model.training
    mapping = model.vocabulary_mapping
    assert mapping.eol_token_id == ids.eol
    assert mapping.img2bpe[0] == ids.visual_offset
    assert mapping.img2bpe[ids.codebook_size - 1] == ids.visual_offset + ids.codebook_size - 1
    # a training step's loss is finite and has gradients
    x = torch.randint(0, len(tiny_tokenizer), (2, 12))
    model.train()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_lite_preset_sizes():
    tok = _tokenizer("lite")
    config = build_config("lite", tok)
    text = config.text_config
    assert 4 <= text.num_hidden_layers <= 6 and 256 <= text.hidden_size <= 384
    assert config.vq_config.codebook_size == 1024 and config.vq_config.in_channels == 1
    # two 16x16 images (with rows, EOLs and markers) plus text fit the context
    assert text.max_position_embeddings >= 2 * (16 * 17 + 8) + 256


def test_full_preset_has_emu3_gen_8b_shapes():
    tok = _tokenizer("full")
    config = build_config("full", tok)
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (4096, 32, 32)
    assert (text.num_key_value_heads, text.intermediate_size) == (8, 14336)
    assert (text.vocab_size, text.max_position_embeddings) == (184622, 9216)
    assert text.rope_parameters["rope_theta"] == 1_000_000.0
    assert config.vq_config.codebook_size == 32768
    from transformers import Emu3ForConditionalGeneration

    with torch.device("meta"):  # shapes only: no 34 GB of memory
        model = Emu3ForConditionalGeneration(config)
    n_text = sum(p.numel() for n, p in model.named_parameters() if "vqmodel" not in n)
    assert 8.4e9 < n_text < 8.6e9


def test_errors_name_the_problem(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_config("huge", tiny_tokenizer)
    with pytest.raises(ValueError, match="visual tokens but the 'lite' VQ codebook"):
        build_config("lite", tiny_tokenizer)
    lite = build_config("lite", _tokenizer("lite"))
    problems = config_mismatches(lite, "tiny", tiny_tokenizer)
    assert any(p.startswith("text_config.hidden_size: checkpoint 256") for p in problems)
