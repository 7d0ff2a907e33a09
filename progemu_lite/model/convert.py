"""Convert an original-layout Emu3/ProgEmu checkpoint into a native transformers
``Emu3ForConditionalGeneration`` folder.

The original layout is BAAI's remote-code one (what ``massaki75/progemu`` publishes):

- an LM folder: ``config.json`` with Emu3 LM fields (``hidden_size``, ``rope_theta``, ...),
  safetensors shards (+ ``model.safetensors.index.json``) with ``model.embed_tokens``,
  ``model.layers.N.*``, ``model.norm`` and ``lm_head``;
- a vision-tokenizer folder (``Emu3VisionVQModel``: ``encoder|decoder|quant_conv|
  post_quant_conv|quantize``, config fields ``ch``, ``ch_mult``, ``z_channels``...);
- a tokenizer: either BAAI's tiktoken files (``emu3.tiktoken`` + ``emu3_vision_tokens.txt``) or a
  transformers tokenizer folder (``tokenizer.json``, e.g. from ``BAAI/Emu3-Gen-hf``).

The mapping follows transformers 4.48's ``convert_emu3_weights_to_hf.py`` plus the renames its
later Emu3 classes need (DESIGN.md section 3). Weights are streamed shard by shard, so an 8B
checkpoint converts without building the model in memory; the result is checked against the key
names and shapes of a meta-device ``Emu3ForConditionalGeneration`` before it is moved into place.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..hub import load_weights_file, share_like_a_normal_folder, weight_files

DONE_MARKER = ".progemu-convert.json"
TIKTOKEN_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
# The QWen pre-tokenisation pattern BAAI's Emu3 tokenizer uses (tokenization_emu3.py).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Special tokens of the original tokenizer, in id order, before the vision tokens file.
ORIGINAL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(
    f"<|extra_{i}|>" for i in range(205)
)
SPECIAL_ROLES = {
    "bos_token": "<|extra_203|>",
    "eos_token": "<|extra_204|>",
    "pad_token": "<|endoftext|>",
}
EXTRA_ROLES = {
    "boi_token": "<|image start|>",
    "eoi_token": "<|image end|>",
    "image_wrapper_token": "<|image token|>",
    "eof_token": "<|extra_201|>",
    "image_token": "<image>",
}


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def convert_text_config(original: dict) -> dict:
    """Original Emu3 LM config fields -> ``Emu3TextConfig`` keyword arguments."""
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers") if k not in original]
    if missing:
        raise ValueError(f"the LM config.json lacks Emu3 LM fields: {', '.join(missing)}")
    rope = {"rope_type": "default", "rope_theta": float(original.get("rope_theta", 1e6))}
    scaling = original.get("rope_scaling")
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind != "linear":
            raise ValueError(f"rope_scaling {scaling} is not supported by the converter")
        rope = {
            "rope_type": "linear",
            "rope_theta": rope["rope_theta"],
            "factor": scaling["factor"],
        }
    heads = original.get("num_attention_heads", 32)
    return {
        "vocab_size": original["vocab_size"],
        "hidden_size": original["hidden_size"],
        "intermediate_size": original.get("intermediate_size", 14336),
        "num_hidden_layers": original["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": original.get("num_key_value_heads") or heads,
        "hidden_act": original.get("hidden_act", "silu"),
        "max_position_embeddings": original.get("max_position_embeddings", 9216),
        "rms_norm_eps": original.get("rms_norm_eps", 1e-5),
        "initializer_range": original.get("initializer_range", 0.02),
        "pad_token_id": original.get("pad_token_id", 151643),
        "bos_token_id": original.get("bos_token_id", 151849),
        "eos_token_id": original.get("eos_token_id", 151850),
        "rope_parameters": rope,
        # Dropout only matters in training; the original default (0.1) is kept out of inference.
        "attention_dropout": 0.0,
        "tie_word_embeddings": bool(original.get("tie_word_embeddings", False)),
    }


def convert_vq_config(original: dict) -> dict:
    """Original ``Emu3VisionVQConfig`` fields -> ``Emu3VQVAEConfig`` keyword arguments."""
    if "ch" not in original or "ch_mult" not in original:
        raise ValueError("the vision tokenizer config.json lacks Emu3VisionVQ fields (ch, ch_mult)")
    ch_mult = list(original["ch_mult"])
    return {
        "codebook_size": original.get("codebook_size", 32768),
        "embed_dim": original.get("embed_dim", 4),
        "latent_channels": original.get("z_channels", 4),
        "double_latent": original.get("double_z", False),
        "in_channels": original.get("in_channels", 3),
        "out_channels": original.get("out_channels", 3),
        "temporal_downsample_factor": original.get("temporal_downsample_factor", 4),
        "base_channels": original["ch"],
        "channel_multiplier": ch_mult,
        "num_res_blocks": original.get("num_res_blocks", 2),
        "attn_resolutions": list(original.get("attn_resolutions", [3])),
        # The original attention is single-head over the deepest feature map.
        "hidden_size": original["ch"] * ch_mult[-1],
        "num_attention_heads": 1,
        "attention_dropout": 0.0,
    }


# --------------------------------------------------------------------------------------------
# Weight names
# --------------------------------------------------------------------------------------------


def convert_lm_key(key: str) -> str:
    """``model.*`` -> ``model.text_model.*``; ``lm_head`` stays at the top."""
    if key.startswith("model."):
        return "model.text_model." + key[len("model.") :]
    if key.startswith("lm_head."):
        return key
    raise ValueError(f"unexpected LM weight {key!r} (expected model.* or lm_head.*)")


_VQ_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
_VQ_RENAMES = (
    (re.compile(r"^encoder\.down\."), "encoder.down_block.down."),
    (re.compile(r"^decoder\.up\."), "decoder.up_block.up."),
    (re.compile(r"\.mid\.attn_1\.norm\."), ".mid.attn_norm."),
    (re.compile(r"\.mid\."), ".middle_block."),
    (re.compile(r"\.attn\.(\d+)\.norm\."), r".attn_norms.\1."),
    (re.compile(r"\.(attn\.\d+|attn_1)\.q\."), r".\1.q_proj."),
    (re.compile(r"\.(attn\.\d+|attn_1)\.k\."), r".\1.k_proj."),
    (re.compile(r"\.(attn\.\d+|attn_1)\.v\."), r".\1.v_proj."),
    (re.compile(r"\.(attn\.\d+|attn_1)\.proj_out\."), r".\1.out_proj."),
)
_ATTN_PROJ = re.compile(r"\.(attn\.\d+|attn_1)\.(q_proj|k_proj|v_proj|out_proj)\.weight$")


def convert_vq_key(key: str) -> str:
    """An original ``Emu3VisionVQModel`` weight name -> its ``model.vqmodel.*`` name."""
    if not key.startswith(_VQ_PREFIXES):
        raise ValueError(f"unexpected vision tokenizer weight {key!r}")
    for pattern, replacement in _VQ_RENAMES:
        key = pattern.sub(replacement, key)
    return "model.vqmodel." + key


def convert_vq_tensor(new_key: str, tensor):
    """The attention's 1x1 convolutions become Linear layers: [C, C, 1, 1] -> [C, C]."""
    if _ATTN_PROJ.search(new_key) and tensor.ndim == 4:
        if tensor.shape[2:] != (1, 1):
            raise ValueError(
                f"{new_key}: expected a 1x1 convolution, got shape {tuple(tensor.shape)}"
            )
        return tensor[:, :, 0, 0].contiguous()
    return tensor


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """``emu3.tiktoken``: one ``base64(token) rank`` pair a line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Split ``token`` by applying merges of rank < ``max_rank`` (how tiktoken builds it)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def tokenizer_from_tiktoken(folder: Path):
    """BAAI's tiktoken tokenizer as a ``PreTrainedTokenizerFast`` (byte-level BPE, QWen pattern).

    Ids are kept: BPE ranks are token ids, then the special tokens (``<|endoftext|>``, im_start,
    im_end, ``<|extra_0..204|>``), then the lines of ``emu3_vision_tokens.txt`` (image markers and
    ``<|visual token NNNNNN|>``) — the original numbers them from the count of BPE ranks.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )
    from transformers import PreTrainedTokenizerFast

    ranks = read_tiktoken(folder / TIKTOKEN_FILE)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{folder / TIKTOKEN_FILE}: ranks are not 0..{len(ranks) - 1}")
    vision = [
        line.strip()
        for line in (folder / VISION_TOKENS_FILE).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    byte_map = _byte_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"token rank {rank} cannot be built from two lower-ranked tokens")
        merges.append((to_str(parts[0]), to_str(parts[1])))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()  # the original tokenize() NFC-normalises first
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = list(ORIGINAL_SPECIALS) + vision
    # Added in id order so each lands at len(ranks) + position, as in the original.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for offset, name in enumerate(specials):
        if tok.token_to_id(name) != len(ranks) + offset:
            raise ValueError(f"special token {name!r} did not get id {len(ranks) + offset}")
    extra = {role: name for role, name in EXTRA_ROLES.items() if name in specials}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        clean_up_tokenization_spaces=False,
        extra_special_tokens=extra,
        **SPECIAL_ROLES,
    )


def load_tokenizer(folder: Path):
    """A transformers tokenizer from either layout (see the module docstring)."""
    if (folder / TIKTOKEN_FILE).is_file():
        return tokenizer_from_tiktoken(folder)
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    raise FileNotFoundError(
        f"no tokenizer in {folder}: expected {TIKTOKEN_FILE} + {VISION_TOKENS_FILE} (original "
        "Emu3) or tokenizer.json (transformers); pass --tokenizer FOLDER"
    )


def build_vocabulary_map(tokenizer, vocab_size: int) -> dict[str, int]:
    """Token -> id for every token the LM can emit, visual tokens included (Emu3's image <-> BPE
    mapping reads ``<|visual token NNNNNN|>`` entries from it)."""
    vocab = dict(tokenizer.get_vocab())
    visual = [name for name in vocab if name.startswith("<|visual token")]
    if not visual:
        raise ValueError("the tokenizer has no <|visual token NNNNNN|> tokens")
    for name in visual:
        if not re.fullmatch(r"<\|visual token \d{6}\|>", name):
            raise ValueError(f"visual token {name!r} is not spelled <|visual token NNNNNN|>")
        if vocab[name] >= vocab_size:
            raise ValueError(
                f"{name} has id {vocab[name]}, outside the LM vocabulary ({vocab_size})"
            )
    return dict(sorted(vocab.items(), key=lambda item: item[1]))


# --------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------


def _read_config(folder: Path, what: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in the {what} folder {folder}")
    return json.loads(path.read_text())


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a native model's saved tensors, from a meta-device instance."""
    import torch
    from transformers import Emu3ForConditionalGeneration

    with torch.device("meta"):
        model = Emu3ForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_against(expected: dict, written: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(written))
    unexpected = sorted(set(written) - set(expected))
    wrong = sorted(k for k in set(expected) & set(written) if expected[k] != written[k])
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing {len(missing)}: {', '.join(missing[:5])}")
        if unexpected:
            lines.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:5])}")
        if wrong:
            lines.append(
                "wrong shapes: "
                + ", ".join(f"{k} {written[k]} != {expected[k]}" for k in wrong[:5])
            )
        raise ValueError(
            "converted weights do not fit Emu3ForConditionalGeneration: " + "; ".join(lines)
        )


def _check_one(expected: dict, new_key: str, shape: tuple, key: str, path: Path) -> None:
    if new_key not in expected:
        raise ValueError(
            f"converted weights do not fit Emu3ForConditionalGeneration: {key} in {path.name} "
            f"became {new_key}, which the model does not have"
        )
    if expected[new_key] != shape:
        raise ValueError(
            f"converted weights do not fit Emu3ForConditionalGeneration: {key} in {path.name} "
            f"has shape {shape}, the config implies {expected[new_key]}"
        )


def is_converted(folder: Path) -> bool:
    """A finished conversion: the marker is written last, just before the atomic rename."""
    return (folder / DONE_MARKER).is_file()


def convert_checkpoint(
    lm_dir: str | Path,
    vq_dir: str | Path,
    dst: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
) -> Path:
    """Convert once: write ``dst`` (a native ``Emu3ForConditionalGeneration`` folder with config,
    safetensors, tokenizer and, when the VQ folder has one, image processor) and return it.

    A complete ``dst`` is returned untouched. Work happens in a temporary folder next to ``dst``
    that is renamed into place at the end, so a failure leaves nothing half-written.
    ``dtype`` (``float32``/``bfloat16``/``float16``) casts the weights; default: keep them.
    """
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import Emu3Config

    lm_dir, vq_dir, dst = Path(lm_dir), Path(vq_dir), Path(dst)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else lm_dir
    if is_converted(dst):
        return dst
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(
            f"{dst} exists and is not a finished conversion; remove it or pick another"
        )
    cast = None
    if dtype is not None:
        cast = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            dtype
        )
        if cast is None:
            raise ValueError(f"unknown dtype {dtype!r} (float32, bfloat16 or float16)")

    text_kwargs = convert_text_config(_read_config(lm_dir, "LM"))
    vq_kwargs = convert_vq_config(_read_config(vq_dir, "vision tokenizer"))
    tokenizer = load_tokenizer(tokenizer_dir)
    vocabulary_map = build_vocabulary_map(tokenizer, text_kwargs["vocab_size"])
    config = Emu3Config(text_config=text_kwargs, vq_config=vq_kwargs, vocabulary_map=vocabulary_map)
    expected = _expected_shapes(config)

    lm_files = weight_files(lm_dir, allow_pickle=allow_pickle)
    vq_files = weight_files(vq_dir, allow_pickle=allow_pickle)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        share_like_a_normal_folder(tmp)
        written: dict[str, tuple[int, ...]] = {}
        weight_map: dict[str, str] = {}
        total_bytes = 0
        jobs = [("lm", f) for f in lm_files] + [("vq", f) for f in vq_files]
        out_dtype = None
        for number, (kind, path) in enumerate(
            tqdm(jobs, desc="converting shards", disable=not progress), start=1
        ):
            shard_name = f"model-{number:05d}-of-{len(jobs):05d}.safetensors"
            converted = {}
            for key, tensor in load_weights_file(path, allow_pickle=allow_pickle).items():
                if kind == "lm":
                    new_key = convert_lm_key(key)
                else:
                    new_key = convert_vq_key(key)
                    tensor = convert_vq_tensor(new_key, tensor)
                if new_key in written:
                    raise ValueError(f"{key} in {path.name}: {new_key} appears twice")
                # Fail on the first misfit, not after writing gigabytes of shards.
                _check_one(expected, new_key, tuple(tensor.shape), key, path)
                if cast is not None and tensor.is_floating_point():
                    tensor = tensor.to(cast)
                if kind == "lm" and tensor.is_floating_point():
                    out_dtype = tensor.dtype
                converted[new_key] = tensor.contiguous()
                written[new_key] = tuple(tensor.shape)
                weight_map[new_key] = shard_name
                total_bytes += tensor.numel() * tensor.element_size()
            save_file(converted, str(tmp / shard_name), metadata={"format": "pt"})
            del converted
        _check_against(expected, written)

        if out_dtype is not None:
            config.dtype = str(out_dtype).removeprefix("torch.")
        config.save_pretrained(tmp)
        index = {
            "metadata": {"total_size": total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        tokenizer.save_pretrained(tmp)
        _save_image_processor(vq_dir, tmp)
        marker = {
            "lm": str(lm_dir.resolve()),
            "vq": str(vq_dir.resolve()),
            "tokenizer": str(tokenizer_dir.resolve()),
            "tensors": len(written),
        }
        (tmp / DONE_MARKER).write_text(json.dumps(marker, indent=2))
        if dst.is_dir() and not any(dst.iterdir()):
            dst.rmdir()  # an empty folder the user made for us
        try:
            os.replace(tmp, dst)
        except OSError:
            if not is_converted(dst):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _save_image_processor(vq_dir: Path, out: Path) -> None:
    """The VQ folder's preprocessor settings as an ``Emu3ImageProcessor`` (when it has any)."""
    source = vq_dir / "preprocessor_config.json"
    if not source.is_file():
        return
    from transformers import Emu3ImageProcessor

    original = json.loads(source.read_text())
    keys = (
        "do_resize",
        "do_rescale",
        "rescale_factor",
        "do_normalize",
        "image_mean",
        "image_std",
        "do_convert_rgb",
        "min_pixels",
        "max_pixels",
        "spatial_factor",
    )
    Emu3ImageProcessor(**{k: original[k] for k in keys if k in original}).save_pretrained(out)
