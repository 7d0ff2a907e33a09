import numpy as np
import pytest
import torch

from progemu_lite.model.config import config_mismatches
from progemu_lite.model.grow import copy_sources, grow_decoder_depth
from progemu_lite.model.pipeline import ProgEmuPipeline, build_random

PROMPT = "The left pleural effusion becomes moderate."


def test_copies_are_spread_over_the_depth():
    assert copy_sources(4, 6) == [1, 3]  # the lite model's 4 -> 6 (model card)
    assert copy_sources(4, 8) == [0, 1, 2, 3]
    assert copy_sources(4, 5) == [3]
    assert copy_sources(2, 6) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="--grow-layers 4 must be more than the decoder's 4"):
        copy_sources(4, 4)


def test_grown_model_generates_the_same_and_reloads(tmp_path):
    """A deeper model that starts exactly where the trained one was: same logits, same tokens
    through the KV-cached generation, and its checkpoint loads as the same preset."""
    pipe = build_random("tiny", seed=0)
    prior = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    ids = torch.randint(0, len(pipe.tokenizer), (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before_logits = pipe.model(input_ids=ids).logits
    before = pipe(prior, PROMPT, seed=0, max_text_tokens=12)

    added = grow_decoder_depth(pipe.model, 4)
    assert added == [1, 3]
    layers = pipe.model.model.text_model.layers
    assert len(layers) == 4 and [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    assert torch.equal(layers[1].self_attn.q_proj.weight, layers[0].self_attn.q_proj.weight)
    assert not layers[1].mlp.down_proj.weight.any()
    with torch.no_grad():
        assert torch.equal(pipe.model(input_ids=ids).logits, before_logits)
    after = pipe(prior, PROMPT, seed=0, max_text_tokens=12)
    assert np.array_equal(after.token_ids, before.token_ids)
    assert np.array_equal(after.token_probabilities, before.token_probabilities)

    folder = pipe.save_pretrained(tmp_path / "grown")
    again = ProgEmuPipeline.from_pretrained(folder, preset="tiny")
    assert again.model.config.text_config.num_hidden_layers == 4
    assert np.array_equal(
        again(prior, PROMPT, seed=0, max_text_tokens=12).token_ids, after.token_ids
    )


def test_a_checkpoint_shallower_than_its_preset_is_refused():
    pipe = build_random("tiny", seed=0)
    config = pipe.model.config
    config.text_config.num_hidden_layers = 1
    problems = config_mismatches(config, "tiny", pipe.tokenizer)
    assert problems == ["text_config.num_hidden_layers: checkpoint 1, preset 'tiny' 2"]
    config.text_config.num_hidden_layers = 3
    assert config_mismatches(config, "tiny", pipe.tokenizer) == []
