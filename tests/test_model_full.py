"""The full ProgEmu through the pipeline: names routed through the hub, the CPU refusal of the
8B model (decided from the config, before any weight is read), the CUDA loading path and the
full-model speed benchmark's CPU mode."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import progemu_lite
from progemu_lite import hub
from progemu_lite.model.config import build_config
from progemu_lite.model.pipeline import (
    PIPELINE_FILE,
    ProgEmuPipeline,
    ResourceError,
    build_random,
    check_resources,
    count_parameters,
    dtype_bytes,
    estimate_resources,
    preset_from_config,
)
from progemu_lite.tokenization.text import train_text_tokenizer, vocabulary_corpus
from progemu_lite.tokenization.vq import vq_config

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The left pleural effusion becomes moderate."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_tokenizer():
    """A small text tokenizer with the full preset's 32768 visual tokens."""
    return train_text_tokenizer(vocabulary_corpus(), vq_config("full").codebook_size)


@pytest.fixture(scope="module")
def full_config(full_tokenizer):
    return build_config("full", full_tokenizer)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    pipe = build_random("tiny", seed=0)
    return pipe, pipe.save_pretrained(tmp_path_factory.mktemp("full") / "tiny")


# -- names ----------------------------------------------------------------------------------


def test_registry_name_offline_without_cache_says_how_to_prefetch(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PROGEMU_HOME", str(tmp_path / "empty-home"))
    for load in (progemu_lite.load, ProgEmuPipeline.from_pretrained):
        with pytest.raises(hub.OfflineError, match="run `progemu-lite download progemu`"):
            load("progemu")
    # a hub id goes the same way
    with pytest.raises(hub.OfflineError, match="HF_HUB_OFFLINE is set"):
        progemu_lite.load("some-org/some-model@v1")
    assert not (tmp_path / "empty-home" / "converted").exists()


def test_unshipped_lite_name_gives_the_hubs_error():
    if (hub.PACKAGE_WEIGHTS / "lite").is_dir() and any((hub.PACKAGE_WEIGHTS / "lite").iterdir()):
        pytest.skip("this build ships the lite weights")
    with pytest.raises(FileNotFoundError, match="'lite' checkpoint is not shipped"):
        progemu_lite.load("lite")


def test_missing_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at .*registered name"):
        progemu_lite.load(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        progemu_lite.load(tmp_path / "file.txt")


def test_local_folder_still_loads_and_reports_its_footprint(tiny_checkpoint, capsys):
    pipe, folder = tiny_checkpoint
    loaded = progemu_lite.load(str(folder), verbose=True)
    assert loaded.preset == "tiny" and loaded.grid == (8, 8)
    assert loaded.loading["device"] == "cpu"
    assert loaded.loading["memory_footprint"] == loaded.model.get_memory_footprint() > 0
    assert loaded.loading["estimate"].parameters == sum(p.numel() for p in pipe.model.parameters())
    line = capsys.readouterr().out
    assert "ProgEmu tiny (64x64 images, 8x8 grid) on cpu: float32, attention sdpa" in line
    assert "memory footprint" in line
    for name, value in pipe.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    # quiet by default for small models on the CPU
    progemu_lite.load(folder)
    assert capsys.readouterr().out == ""


def test_native_folder_without_progemu_json_derives_preset_from_config(tiny_checkpoint, tmp_path):
    """A converted folder has no progemu.json: the VQ config decides the preset and geometry."""
    pipe, folder = tiny_checkpoint
    native = tmp_path / "native"
    shutil.copytree(folder, native)
    (native / PIPELINE_FILE).unlink()
    loaded = ProgEmuPipeline.from_pretrained(native)
    assert loaded.preset == "tiny" and loaded.image_size == 64 and loaded.grid == (8, 8)
    prior = np.full((64, 64), 90, np.uint8)
    a = loaded(prior, PROMPT, temperature=0, max_text_tokens=4)
    b = pipe(prior, PROMPT, temperature=0, max_text_tokens=4)
    assert np.array_equal(a.token_ids, b.token_ids)
    with pytest.raises(ValueError, match="expected 'lite'"):
        ProgEmuPipeline.from_pretrained(native, preset="lite")


def test_preset_from_config(full_config, tiny_checkpoint):
    from transformers import Emu3Config

    assert preset_from_config(full_config) == "full"
    assert preset_from_config(Emu3Config.from_pretrained(tiny_checkpoint[1])) == "tiny"
    odd = Emu3Config.from_pretrained(tiny_checkpoint[1])
    odd.vq_config.codebook_size = 17
    with pytest.raises(ValueError, match="matches no preset"):
        preset_from_config(odd, "folder X")


# -- the CPU refusal ------------------------------------------------------------------------


def _text_parameters(t) -> int:
    """Llama-style decoder parameters, worked out by hand (embedding, layers, norm, lm_head)."""
    head = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head
    layer = (
        2 * t.hidden_size * t.hidden_size  # q, o
        + 2 * t.hidden_size * kv  # k, v
        + 3 * t.hidden_size * t.intermediate_size  # gate, up, down
        + 2 * t.hidden_size  # the two RMSNorms
    )
    return 2 * t.vocab_size * t.hidden_size + t.num_hidden_layers * layer + t.hidden_size


def test_full_estimate_from_config_alone(full_config):
    from transformers import Emu3VQVAE

    with torch.device("meta"):
        vq = sum(p.numel() for p in Emu3VQVAE(full_config.vq_config).parameters())
    parameters = count_parameters(full_config)
    assert parameters == _text_parameters(full_config.text_config) + vq
    assert 8.5e9 < parameters < 9e9  # Emu3-Gen: "8B"

    cpu = estimate_resources(full_config, "full", device="cpu", dtype=torch.float32)
    assert cpu.weight_bytes == 4 * parameters
    assert cpu.new_tokens == 64 * 65 + 3 + 195  # grid + EOLs, EOF, EOI, EOS; text cap
    assert cpu.prefix_tokens > 64 * 65
    assert cpu.seconds_per_counterfactual > cpu.new_tokens * cpu.seconds_per_token
    gpu = estimate_resources(full_config, "full", device="cuda", dtype=torch.bfloat16)
    assert gpu.weight_bytes == 2 * parameters
    assert gpu.seconds_per_counterfactual < cpu.seconds_per_counterfactual / 50
    # the checkpoint's own dtype when none is asked for
    full_config.dtype = "bfloat16"
    try:
        assert estimate_resources(full_config, "full").bytes_per_parameter == 2
    finally:
        full_config.dtype = None
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("int3")


def test_cpu_refuses_the_full_model_unless_forced(full_config, tiny_checkpoint):
    from transformers import Emu3Config

    cpu = estimate_resources(full_config, "full", device="cpu", dtype=torch.float32)
    with pytest.raises(ResourceError) as err:
        check_resources(cpu)
    message = str(err.value)
    assert "refusing to load the full 8B ProgEmu on a CPU" in message
    assert "8.8B parameters need about 35 GB" in message
    assert "per token" in message and "one counterfactual" in message
    assert "force=True (--force)" in message and "docs/gpu.md" in message
    check_resources(cpu, force=True)  # the override
    check_resources(estimate_resources(full_config, "full", device="cuda"))
    tiny_config = Emu3Config.from_pretrained(tiny_checkpoint[1])
    check_resources(estimate_resources(tiny_config, "tiny", device="cpu"))


def test_refusal_happens_before_any_weight_is_read(full_config, tmp_path):
    """A folder with only the 8B config (no weights, no tokenizer, no progemu.json): loading it
    on the CPU is refused from the config alone; forced, it gets as far as the tokenizer."""
    folder = tmp_path / "emu3-gen-shapes"
    full_config.save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))
    with pytest.raises(ResourceError, match="8.8B parameters"):
        ProgEmuPipeline.from_pretrained(folder, device="cpu")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        ProgEmuPipeline.from_pretrained(folder, device="cpu", force=True)


# -- the benchmark --------------------------------------------------------------------------


@pytest.mark.slow
def test_full_model_benchmark_runs_tiny_shapes_on_cpu_and_says_so():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "full_model_speed.py"),
            "--preset",
            "tiny",
            "--decode-steps",
            "4",
            "--repeats",
            "1",
            "--text-tokens",
            "8",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "running the TINY shapes on the CPU" in text
    assert "measured memcpy copy" in text
    assert "batch 1:" in text and "batch 8:" in text
    assert text.count("ratio to bound") == 2
    assert "counterfactual: 83 new tokens" in text  # 8*9 + EOF, EOI + 8 text + EOS
    assert "[tiny shapes on CPU: not meaningful]" in text


# -- CUDA -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_loading_path_bf16_attention_and_footprint(tiny_checkpoint, capsys):
    """from_pretrained(device="cuda"): bf16 by default, flash attention 2 or sdpa, everything on
    the GPU (tiny weights never need offload) and the footprint printed."""
    from progemu_lite.model.pipeline import attention_implementation

    _, folder = tiny_checkpoint
    pipe = ProgEmuPipeline.from_pretrained(folder, device="cuda")
    assert pipe.device.type == "cuda"
    assert pipe.model.dtype == torch.bfloat16
    assert pipe.model.config.text_config._attn_implementation == attention_implementation()
    assert pipe.loading["device_map"] is None
    assert "on cuda" in capsys.readouterr().out
    prior = np.full((64, 64), 90, np.uint8)
    result = pipe(prior, PROMPT, seed=0, max_text_tokens=6)
    assert result.image.shape == (64, 64)
    assert result.token_ids[-1] == pipe.builder.ids.eos
