"""progemu_lite.model.convert: original BAAI Emu3 layout -> native Emu3ForConditionalGeneration,
checked against the independent plain-torch reference in tests/reference_emu3.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference_emu3 import greedy, lm_logits, write_original_checkpoint  # noqa: E402

from progemu_lite.model import convert  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("emu3")
    fixture = write_original_checkpoint(root / "src")
    dst = convert.convert_checkpoint(
        fixture["lm_dir"], fixture["vq_dir"], root / "native", progress=False
    )
    from transformers import Emu3ForConditionalGeneration

    model, info = Emu3ForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    return fixture, dst, model.eval(), info


def test_loads_without_missing_or_unexpected_weights(converted):
    _, dst, _, info = converted
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    config = json.loads((dst / "config.json").read_text())
    assert config["text_config"]["rope_parameters"]["rope_theta"] == 10000.0
    assert config["text_config"]["num_key_value_heads"] == 2
    assert config["vq_config"]["base_channels"] == 32
    assert config["vq_config"]["channel_multiplier"] == [1, 1, 2, 2]


def test_logits_match_the_plain_torch_reference(converted):
    fixture, _, model, _ = converted
    specials = fixture["specials"]
    ids = torch.tensor(
        [
            [specials["<|extra_203|>"], 72, 300, 17, 260, 99, specials["<|visual token 000003|>"]],
            [specials["<|extra_203|>"], 5, 6, 7, 8, 9, 10],
        ]
    )
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    reference = lm_logits(fixture["lm_state"], fixture["lm_config"], ids)
    assert ours.shape == reference.shape
    assert reference.std() > 0.1  # the comparison is not between near-zero numbers
    assert (ours - reference).abs().max().item() <= 1e-5


def test_greedy_generation_matches_the_reference(converted):
    fixture, _, model, _ = converted
    prompt = torch.tensor([[fixture["specials"]["<|extra_203|>"], 300, 17, 260]])
    with torch.no_grad():
        ours = model.generate(
            input_ids=prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    reference = greedy(fixture["lm_state"], fixture["lm_config"], prompt, steps=8)
    assert ours.tolist() == reference.tolist()
    assert len(set(ours[0, 4:].tolist())) > 1  # not a degenerate repeat of one token


def test_vq_encode_and_decode_match_the_original_structure(converted):
    fixture, _, model, _ = converted
    reference = fixture["vq"]
    torch.manual_seed(3)
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    vq = model.model.vqmodel
    with torch.no_grad():
        repeated = images.unsqueeze(1).repeat(1, 2, 1, 1, 1)
        hidden_ours = vq.encoder(repeated)
        hidden_ref = reference.encoder(repeated)
        assert (hidden_ours - hidden_ref).abs().max().item() <= 1e-5
        codes_ref = reference.encode(images)
        codes_ours = vq.encode(images, torch.tensor([[16, 16]] * 3)).image_tokens
        assert [c.tolist() for c in codes_ours] == codes_ref.tolist()
        decoded_ours = vq.decode(codes_ref)
        decoded_ref = reference.decode(codes_ref)
    assert decoded_ours.shape == (3, 1, 16, 16)
    assert (decoded_ours - decoded_ref).abs().max().item() <= 1e-5


def test_attention_convs_are_squeezed_and_batchnorm_stats_kept(converted):
    fixture, _, model, _ = converted
    original = fixture["vq"].state_dict()
    native = model.model.vqmodel.state_dict()
    q_conv = original["encoder.mid.attn_1.q.weight"]
    assert q_conv.shape[2:] == (1, 1)
    assert torch.equal(native["encoder.middle_block.attn_1.q_proj.weight"], q_conv[:, :, 0, 0])
    assert torch.equal(
        native["decoder.up_block.up.3.attn_norms.0.conv_y.weight"],
        original["decoder.up.3.attn.0.norm.conv_y.weight"],
    )
    stats = "encoder.time_res_stack.0.norm1.running_var"
    assert torch.equal(native[stats], original[stats])
    assert not torch.equal(native[stats], torch.ones_like(native[stats]))
    assert int(native["decoder.time_res_stack.0.norm2.num_batches_tracked"]) == 7


def test_vocabulary_map_and_tokenizer_keep_original_ids(converted):
    fixture, dst, model, _ = converted
    from transformers import AutoTokenizer

    specials = fixture["specials"]
    vocab_map = model.config.vocabulary_map
    for name in ("<|visual token 000000|>", "<|visual token 000015|>", "<|extra_200|>"):
        assert vocab_map[name] == specials[name]
    mapping = model.model.vocabulary_mapping
    assert mapping.img2bpe[15] == specials["<|visual token 000015|>"]
    assert mapping.eol_token_id == specials["<|extra_200|>"]

    tokenizer = AutoTokenizer.from_pretrained(dst)
    text = "the left pleural effusion<|image start|><|visual token 000007|>"
    ids = tokenizer(text)["input_ids"]
    assert ids[-2:] == [specials["<|image start|>"], specials["<|visual token 000007|>"]]
    assert tokenizer.decode(ids) == text
    assert tokenizer.boi_token == "<|image start|>"
    assert tokenizer.eof_token == "<|extra_201|>"
    assert tokenizer.bos_token_id == specials["<|extra_203|>"]
    # the learned merges are used: a frequent word is shorter than its bytes
    assert len(tokenizer(" pleural effusion")["input_ids"]) < len(" pleural effusion")


def test_sequence_builder_reads_the_original_id_layout(converted):
    """The converted tokenizer keeps BAAI's ids (specials after the text, no ``<image>``);
    the ProgEmu sequence code must build and parse sequences with it all the same."""
    fixture, dst, _, _ = converted
    import numpy as np
    from transformers import AutoTokenizer

    from progemu_lite.tokenization.sequence import SequenceBuilder
    from progemu_lite.tokenization.text import TokenIds

    specials = fixture["specials"]
    ids = TokenIds.from_tokenizer(AutoTokenizer.from_pretrained(dst))
    assert ids.bos == specials["<|extra_203|>"]
    assert ids.eol == specials["<|extra_200|>"]
    assert ids.visual_offset == specials["<|visual token 000000|>"]
    assert ids.text_vocab_size == specials["<|endoftext|>"]
    assert ids.placeholder is None

    builder = SequenceBuilder(AutoTokenizer.from_pretrained(dst))
    prior = np.arange(6).reshape(2, 3) % ids.codebook_size
    followup = (prior + 1) % ids.codebook_size
    input_ids, _ = builder.training_ids(prior, "left effusion", followup, "It grew.")
    assert input_ids[0] == ids.bos and input_ids[-1] == ids.eos
    prefix = builder.prefix_ids(prior, "left effusion", grid=(2, 3))
    parsed = builder.parse_generated(input_ids[len(prefix) :], (2, 3))
    assert np.array_equal(parsed.codes, followup)
    assert parsed.text.strip() == "It grew."


TEXTS = [
    "The left pleural effusion is larger.",
    "Unchanged small bilateral pleural effusions; new RLL opacity (pneumonia?) 12 cm.\n\nOK",
    "  leading spaces, tabs\tand trailing   ",
    "Café naïve — 胸部X光 ümlaut e\u0301 composed",  # NFC turns e + U+0301 into é
    "I'll say it's 2024-05-06: they've gone.",
    "<|extra_203|>prompt<|image start|>2*2<|image token|><|visual token 000001|><|extra_200|>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tiktoken_conversion_encodes_like_tiktoken(converted, text):
    """The converted tokenizer must split text exactly as BAAI's tiktoken tokenizer does."""
    import base64
    import unicodedata

    tiktoken = pytest.importorskip("tiktoken")
    fixture, dst, _, _ = converted
    from transformers import AutoTokenizer

    lm_dir = fixture["lm_dir"]
    ranks = {}
    for line in (lm_dir / "emu3.tiktoken").read_text().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    encoding = tiktoken.Encoding(
        "emu3-tiny",
        pat_str=convert.QWEN_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=fixture["specials"],
    )
    expected = encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    tokenizer = AutoTokenizer.from_pretrained(dst)
    assert tokenizer(text)["input_ids"] == expected


def test_image_processor_settings_carried_over(converted):
    _, dst, _, _ = converted
    from transformers import Emu3ImageProcessor

    processor = Emu3ImageProcessor.from_pretrained(dst)
    assert processor.image_mean == [0.5]
    assert processor.min_pixels == 64 * 64


def test_second_run_is_skipped(converted, tmp_path):
    fixture, dst, _, _ = converted
    before = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    again = convert.convert_checkpoint(fixture["lm_dir"], fixture["vq_dir"], dst, progress=False)
    assert again == dst
    assert {p.name: p.stat().st_mtime_ns for p in dst.iterdir()} == before


def test_bad_input_leaves_nothing_behind(converted, tmp_path):
    fixture, _, _, _ = converted
    # a VQ folder whose weights do not fit its config: conversion must fail before the rename
    broken_vq = tmp_path / "vq"
    broken_vq.mkdir()
    config = json.loads((fixture["vq_dir"] / "config.json").read_text())
    config["ch"] = 64
    (broken_vq / "config.json").write_text(json.dumps(config))
    os.symlink(fixture["vq_dir"] / "model.safetensors", broken_vq / "model.safetensors")
    dst = tmp_path / "out"
    with pytest.raises(ValueError, match="do not fit"):
        convert.convert_checkpoint(fixture["lm_dir"], broken_vq, dst, progress=False)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["vq"]


def test_missing_lm_fields_and_pickle_weights_are_refused(tmp_path):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "Emu3"}))
    with pytest.raises(ValueError, match="vocab_size"):
        convert.convert_text_config(json.loads((lm / "config.json").read_text()))
    torch.save({"lm_head.weight": torch.zeros(2, 2)}, lm / "pytorch_model.bin")
    from progemu_lite.hub import weight_files

    with pytest.raises(PermissionError, match="pickle"):
        weight_files(lm)


def test_vq_key_mapping_examples():
    cases = {
        "encoder.down.0.block.1.norm1.weight": "model.vqmodel.encoder.down_block.down.0.block.1.norm1.weight",
        "encoder.down.3.attn.0.norm.bias": "model.vqmodel.encoder.down_block.down.3.attn_norms.0.bias",
        "encoder.down.3.attn.1.proj_out.weight": "model.vqmodel.encoder.down_block.down.3.attn.1.out_proj.weight",
        "encoder.mid.attn_1.norm.weight": "model.vqmodel.encoder.middle_block.attn_norm.weight",
        "decoder.mid.attn_1.k.bias": "model.vqmodel.decoder.middle_block.attn_1.k_proj.bias",
        "decoder.up.2.upsample.conv.weight": "model.vqmodel.decoder.up_block.up.2.upsample.conv.weight",
        "decoder.time_res_stack.1.norm1.running_mean": "model.vqmodel.decoder.time_res_stack.1.norm1.running_mean",
        "quantize.embedding.weight": "model.vqmodel.quantize.embedding.weight",
        "post_quant_conv.conv.weight": "model.vqmodel.post_quant_conv.conv.weight",
    }
    for old, new in cases.items():
        assert convert.convert_vq_key(old) == new
    assert convert.convert_lm_key("model.layers.3.mlp.up_proj.weight") == (
        "model.text_model.layers.3.mlp.up_proj.weight"
    )
    with pytest.raises(ValueError):
        convert.convert_vq_key("vision_tower.weight")


def test_cli_convert(converted, tmp_path, capsys):
    from progemu_lite import cli

    fixture, reference_dst, _, _ = converted
    dst = tmp_path / "via-cli"
    lm, vq = str(fixture["lm_dir"]), str(fixture["vq_dir"])
    assert cli.main(["convert", lm, str(dst), "--vq", vq, "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    assert convert.is_converted(dst)
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    # without the vision tokenizer the command explains what is missing, in one line
    assert cli.main(["convert", lm, str(tmp_path / "other")]) == 2
    assert "--vq" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_two_processes_converting_at_once(converted, tmp_path):
    import subprocess

    fixture, _, _, _ = converted
    dst = tmp_path / "shared-dst"
    command = [
        sys.executable,
        "-m",
        "progemu_lite.cli",
        "convert",
        str(fixture["lm_dir"]),
        str(dst),
        "--vq",
        str(fixture["vq_dir"]),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert out.strip().splitlines()[-1] == str(dst)
    assert convert.is_converted(dst)
    assert [p.name for p in tmp_path.iterdir()] == ["shared-dst"]  # no temporary folder left


def test_transformers_tokenizer_folder_gives_the_same_vocabulary(converted, tmp_path):
    """The `progemu` entry takes its tokenizer from a transformers folder (Emu3-Gen-hf); a folder
    with tokenizer.json must give the same vocabulary map as the tiktoken original."""
    fixture, dst, model, _ = converted
    out = convert.convert_checkpoint(
        fixture["lm_dir"], fixture["vq_dir"], tmp_path / "hf-tok", tokenizer_dir=dst, progress=False
    )
    config = json.loads((out / "config.json").read_text())
    assert config["vocabulary_map"] == model.config.vocabulary_map


def test_progemu_registry_entry_offline_converts_once_and_loads(
    converted, monkeypatch, tmp_path, capsys
):
    """`progemu` end to end without network: its three hub repositories sit in the shared cache
    (hub layout, tiny stand-ins), HF_HUB_OFFLINE=1; the first load converts into
    PROGEMU_HOME/converted, the second reuses it, and the model computes the reference logits."""
    from hub_layout import make_hub_cache
    from transformers import Emu3ForConditionalGeneration

    from progemu_lite import cli, hub

    fixture, reference_dst, _, _ = converted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PROGEMU_HOME", str(tmp_path / "shared"))
    cache = hub.hub_cache_dir()
    spec = hub.REGISTRY["progemu"]
    folders = {
        "lm": fixture["lm_dir"],
        "vq": fixture["vq_dir"],
        "tokenizer": reference_dst,  # a transformers tokenizer folder, like Emu3-Gen-hf's
    }
    for role, folder in folders.items():
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        if role == "tokenizer":
            files = {n: b for n, b in files.items() if n.startswith("tokenizer")}
        make_hub_cache(cache, spec.parts[role].repo_id, files)

    path = hub.native_checkpoint("progemu", progress=False)
    assert path == hub.converted_dir("progemu", spec)
    assert path.is_relative_to(hub.progemu_home())

    def tree(root):
        return {str(p): (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in root.rglob("*")}

    before = tree(hub.progemu_home())
    # later loads (a class reading the shared cache) write nothing anywhere in it
    assert hub.native_checkpoint("progemu", progress=False) == path
    model = Emu3ForConditionalGeneration.from_pretrained(path).eval()
    assert tree(hub.progemu_home()) == before
    ids = torch.tensor([[fixture["specials"]["<|extra_203|>"], 300, 17, 260, 5]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    reference = lm_logits(fixture["lm_state"], fixture["lm_config"], ids)
    assert (ours - reference).abs().max().item() <= 1e-5

    # the download command reports the cached parts and the (already made) native folder
    assert cli.main(["download", "progemu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["lm", "vq", "tokenizer", "native"]
    assert lines[-1] == f"native: {path}"


def test_converted_folder_is_readable_by_others(converted):
    """The temporary folder comes from mkdtemp (0700); the published one must not be."""
    _, dst, _, _ = converted
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask


def test_truncated_shard_is_a_clear_error(converted, tmp_path):
    fixture, _, _, _ = converted
    lm = tmp_path / "lm"
    lm.mkdir()
    for source in fixture["lm_dir"].iterdir():
        data = source.read_bytes()
        if source.name == "model-00002-of-00002.safetensors":
            data = data[: len(data) // 2]  # an interrupted copy
        (lm / source.name).write_bytes(data)
    dst = tmp_path / "out"
    with pytest.raises(ValueError, match="truncated"):
        convert.convert_checkpoint(lm, fixture["vq_dir"], dst, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]
