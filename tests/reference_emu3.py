"""Test fixtures for the converter: an independent plain-torch reference of the ORIGINAL Emu3
layout (BAAI remote code), and a writer of tiny original-layout checkpoints.

Nothing here imports transformers' Emu3 classes or progemu_lite: the reference is written from
the math (RMSNorm, RoPE, grouped-query attention, SwiGLU; the VQ's ResNet/attention/temporal
blocks) and uses the original parameter names, so the converted model is checked against
something that shares no code with it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

# --------------------------------------------------------------------------------------------
# LM: a Llama-style decoder computed straight from an original-layout state dict
# --------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance + eps))


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding on [batch, heads, seq, head_dim], halves rotated (Llama convention)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos + rotated * sin


def lm_logits(state: dict, config: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] of the original Emu3 LM for ``input_ids``."""
    hidden_size = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]
    head_dim = hidden_size // n_heads
    eps = config["rms_norm_eps"]
    theta = config["rope_theta"]
    batch, seq = input_ids.shape
    positions = torch.arange(seq)
    causal = torch.full((seq, seq), float("-inf")).triu(1)

    x = state["model.embed_tokens.weight"][input_ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, state[p + "input_layernorm.weight"], eps)
        q = (h @ state[p + "self_attn.q_proj.weight"].T).view(batch, seq, n_heads, head_dim)
        k = (h @ state[p + "self_attn.k_proj.weight"].T).view(batch, seq, n_kv, head_dim)
        v = (h @ state[p + "self_attn.v_proj.weight"].T).view(batch, seq, n_kv, head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rope(q, positions, theta), rope(k, positions, theta)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal
        attn = scores.softmax(-1) @ v
        attn = attn.transpose(1, 2).reshape(batch, seq, hidden_size)
        x = x + attn @ state[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, state[p + "post_attention_layernorm.weight"], eps)
        gate = F.silu(h @ state[p + "mlp.gate_proj.weight"].T)
        up = h @ state[p + "mlp.up_proj.weight"].T
        x = x + (gate * up) @ state[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, state["model.norm.weight"], eps)
    return x @ state["lm_head.weight"].T


def greedy(state: dict, config: dict, input_ids: torch.Tensor, steps: int) -> torch.Tensor:
    ids = input_ids
    for _ in range(steps):
        next_id = lm_logits(state, config, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


# --------------------------------------------------------------------------------------------
# VQ: the original Emu3VisionVQ structure and parameter names, in plain torch
# --------------------------------------------------------------------------------------------


def swish(x):
    return x * torch.sigmoid(x)


def group_norm(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class CausalConv3d(nn.Module):
    def __init__(self, cin, cout, kernel=(3, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        pad = []
        for k, s in reversed(list(zip(kernel[1:], stride[1:], strict=True))):
            p = k - s
            pad += [p // 2 + p % 2, p // 2]
        self.padding = (*pad, 2, 0)  # two frames of causal padding in time
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride)

    def forward(self, x):
        return self.conv(F.pad(x, self.padding))


class SpatialNorm(nn.Module):
    def __init__(self, channels, zq_channels):
        super().__init__()
        self.norm_layer = group_norm(channels)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, x, zq):
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, zq_channels=None):
        super().__init__()
        self.spatial = zq_channels is not None
        self.norm1 = SpatialNorm(cin, zq_channels) if self.spatial else group_norm(cin)
        self.norm2 = SpatialNorm(cout, zq_channels) if self.spatial else group_norm(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, zq=None):
        args = (zq,) if self.spatial else ()
        h = self.conv1(swish(self.norm1(x, *args)))
        h = self.conv2(swish(self.norm2(h, *args)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1x1-convolution projections."""

    def __init__(self, channels, zq_channels=None):
        super().__init__()
        self.spatial = zq_channels is not None
        self.norm = SpatialNorm(channels, zq_channels) if self.spatial else group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x, zq=None):
        h = self.norm(x, *((zq,) if self.spatial else ()))
        b, c, height, width = h.shape
        q = self.q(h).reshape(b, c, -1)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=2)
        out = (v @ weights.transpose(1, 2)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class TemporalResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm1 = nn.BatchNorm3d(channels)
        self.conv1 = CausalConv3d(channels, channels, (3, 3, 3))
        self.norm2 = nn.BatchNorm3d(channels)
        self.conv2 = CausalConv3d(channels, channels, (3, 3, 3))

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        return x + self.conv2(swish(self.norm2(h)))


class Stage(nn.Module):
    pass


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        ch, mult, nres = c["ch"], c["ch_mult"], c["num_res_blocks"]
        self.nres, self.nlev = nres, len(mult)
        self.conv_in = nn.Conv2d(c["in_channels"], ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            stage = Stage()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(nres):
                stage.block.append(ResBlock(block_in, ch * m))
                block_in = ch * m
                if level in c["attn_resolutions"]:
                    stage.attn.append(AttnBlock(block_in))
            if level != self.nlev - 1:
                stage.downsample = Stage()
                stage.downsample.conv = nn.Conv2d(block_in, block_in, 3, stride=2)
            self.down.append(stage)
        self.mid = Stage()
        self.mid.block_1 = ResBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResBlock(block_in, block_in)
        self.norm_out = group_norm(block_in)
        z = c["z_channels"]
        self.conv_out = nn.Conv2d(block_in, z, 3, padding=1)
        self.time_conv = nn.ModuleList()
        for _ in range(int(math.log2(c["temporal_downsample_factor"]))):
            down = Stage()
            down.conv = CausalConv3d(z, z, (4, 3, 3), (2, 1, 1))
            self.time_conv.append(down)
        self.time_res_stack = nn.Sequential(*[TemporalResBlock(z) for _ in range(nres)])

    def forward(self, x):  # x: b t c h w
        t = x.shape[1]
        h = self.conv_in(x.reshape(-1, *x.shape[2:]))
        for level, stage in enumerate(self.down):
            for i in range(self.nres):
                h = stage.block[i](h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != self.nlev - 1:
                h = stage.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.conv_out(swish(self.norm_out(h)))
        h = h.reshape(-1, t, *h.shape[1:]).permute(0, 2, 1, 3, 4)
        for down in self.time_conv:
            h = swish(down.conv(h))
        return self.time_res_stack(h).permute(0, 2, 1, 3, 4)


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        ch, mult, nres, zq = c["ch"], c["ch_mult"], c["num_res_blocks"], c["embed_dim"]
        z = c["z_channels"]
        self.nres, self.nlev = nres, len(mult)
        self.time_res_stack = nn.Sequential(*[TemporalResBlock(z) for _ in range(nres)])
        self.time_conv = nn.ModuleList()
        for _ in range(int(math.log2(c["temporal_downsample_factor"]))):
            up = Stage()
            up.conv = CausalConv3d(z, z, (3, 3, 3))
            self.time_conv.append(up)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, block_in, 3, padding=1)
        self.mid = Stage()
        self.mid.block_1 = ResBlock(block_in, block_in, zq)
        self.mid.attn_1 = AttnBlock(block_in, zq)
        self.mid.block_2 = ResBlock(block_in, block_in, zq)
        self.up = nn.ModuleList()
        for level in reversed(range(self.nlev)):
            stage = Stage()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(nres + 1):
                stage.block.append(ResBlock(block_in, ch * mult[level], zq))
                block_in = ch * mult[level]
                if level in c["attn_resolutions"]:
                    stage.attn.append(AttnBlock(block_in, zq))
            if level != 0:
                stage.upsample = Stage()
                stage.upsample.conv = nn.Conv2d(block_in, block_in, 3, padding=1)
            self.up.insert(0, stage)
        self.norm_out = SpatialNorm(block_in, zq)
        self.conv_out = nn.Conv2d(block_in, c["out_channels"], 3, padding=1)

    def forward(self, z, zq):
        both = torch.cat((z, zq), dim=0).permute(0, 2, 1, 3, 4)
        both = self.time_res_stack(both)
        for up in self.time_conv:
            b, c, t, height, width = both.shape
            stretched = both.permute(0, 1, 3, 4, 2).reshape(b, -1, t)
            stretched = F.interpolate(stretched, scale_factor=2.0, mode="nearest")
            stretched = stretched.view(b, c, height, width, -1).permute(0, 1, 4, 2, 3)
            both = swish(up.conv(stretched.contiguous()))
        both = both.permute(0, 2, 1, 3, 4)
        h, zq = torch.chunk(both, 2, dim=0)
        h = self.conv_in(h.reshape(-1, *h.shape[2:]))
        zq = zq.reshape(-1, *zq.shape[2:])
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, zq), zq), zq)
        for level in reversed(range(self.nlev)):
            stage = self.up[level]
            for i in range(self.nres + 1):
                h = stage.block[i](h, zq)
                if len(stage.attn):
                    h = stage.attn[i](h, zq)
            if level != 0:
                h = stage.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(swish(self.norm_out(h, zq)))


class Quantizer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embedding = nn.Embedding(c["codebook_size"], c["embed_dim"])


class OriginalVQ(nn.Module):
    """The original Emu3VisionVQModel: same module tree, so the same state-dict names."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = Quantizer(config)
        self.quant_conv = CausalConv3d(config["z_channels"], config["embed_dim"])
        self.post_quant_conv = CausalConv3d(config["embed_dim"], config["z_channels"])
        self.scale = 2 ** (len(config["ch_mult"]) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[b, c, h, w] in [-1, 1] -> codes [b, h/8, w/8] (the image repeated in time)."""
        x = images.unsqueeze(1).repeat(1, self.config["temporal_downsample_factor"], 1, 1, 1)
        h = self.encoder(x).permute(0, 2, 1, 3, 4)
        h = self.quant_conv(h).permute(0, 2, 1, 3, 4)
        b, t, c, height, width = h.shape
        flat = h.permute(0, 1, 3, 4, 2).reshape(-1, c)
        codebook = self.quantize.embedding.weight
        distance = (flat**2).sum(1, keepdim=True) + (codebook**2).sum(1) - 2 * flat @ codebook.T
        return distance.argmin(1).view(b, t, height, width).squeeze(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [b, h, w] -> the first decoded frame [b, c, 8h, 8w]."""
        x = codes.unsqueeze(1)
        b, t, height, width = x.shape
        quant = self.quantize.embedding(x.flatten()).view(b, t, height, width, -1)
        quant = quant.permute(0, 4, 1, 2, 3).contiguous()
        post = self.post_quant_conv(quant).permute(0, 2, 1, 3, 4)
        video = self.decoder(post, quant.permute(0, 2, 1, 3, 4))
        tdf = self.config["temporal_downsample_factor"]
        video = video.reshape(b, t * tdf, -1, height * self.scale, width * self.scale)
        return video[:, 0]


# --------------------------------------------------------------------------------------------
# Writer of tiny original-layout checkpoints
# --------------------------------------------------------------------------------------------

TINY_LM = {
    "model_type": "Emu3",
    "architectures": ["Emu3ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "attention_dropout": 0.1,
    "tie_word_embeddings": False,
}
TINY_VQ = {
    "model_type": "Emu3VisionVQ",
    "codebook_size": 16,
    "embed_dim": 4,
    "z_channels": 4,
    "double_z": False,
    "in_channels": 1,
    "out_channels": 1,
    "temporal_downsample_factor": 2,
    "ch": 32,
    "ch_mult": [1, 1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [3],
    "dropout": 0.0,
}


CORPUS = (
    "The left pleural effusion is larger. The right lung is clear. "
    "Stable cardiomediastinal silhouette; no pneumothorax. Heart size is normal.\n"
    "Unchanged small bilateral pleural effusions with adjacent atelectasis. "
    "New right lower lobe opacity, concerning for pneumonia. Pulmonary edema has resolved. "
    "Lines and tubes: the endotracheal tube ends 4 cm above the carina."
)


def train_byte_bpe(text: str, merges: int) -> list[bytes]:
    """Tokens in rank order: the 256 bytes, then a plain BPE training run (most frequent
    adjacent pair first) over crude word pieces of ``text`` -- a valid tiktoken rank table."""
    pieces = Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", text))
    words = {tuple(bytes([b]) for b in piece.encode()): n for piece, n in pieces.items()}
    tokens = [bytes([b]) for b in range(256)]
    known = set(tokens)
    for _ in range(merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            tokens.append(best[0] + best[1])
        merged = {}
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged
    return tokens


def write_original_tokenizer(folder: Path, codebook_size: int) -> dict[str, int]:
    """``emu3.tiktoken`` + ``emu3_vision_tokens.txt``; returns the token -> id map it implies."""
    tokens = train_byte_bpe(CORPUS, merges=200)
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    (folder / "emu3.tiktoken").write_text("\n".join(lines) + "\n")
    vision = ["<|image token|>", "<|image start|>", "<|image end|>"] + [
        f"<|visual token {i:06d}|>" for i in range(codebook_size)
    ]
    (folder / "emu3_vision_tokens.txt").write_text("\n".join(vision) + "\n")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    specials += [f"<|extra_{i}|>" for i in range(205)] + vision
    return {name: len(tokens) + i for i, name in enumerate(specials)}


def write_original_checkpoint(root: Path, seed: int = 0, shards: int = 2) -> dict:
    """Write ``root/lm`` (sharded safetensors + index + tiktoken tokenizer) and ``root/vq``
    (config + model.safetensors with non-trivial BatchNorm statistics) in the original layout."""
    generator = torch.Generator().manual_seed(seed)
    lm_dir, vq_dir = root / "lm", root / "vq"
    lm_dir.mkdir(parents=True)
    vq_dir.mkdir(parents=True)

    specials = write_original_tokenizer(lm_dir, TINY_VQ["codebook_size"])
    vocab_size = max(specials.values()) + 1
    lm_config = dict(
        TINY_LM,
        vocab_size=vocab_size,
        pad_token_id=specials["<|endoftext|>"],
        bos_token_id=specials["<|extra_203|>"],
        eos_token_id=specials["<|extra_204|>"],
        img_token_id=specials["<|image token|>"],
        boi_token_id=specials["<|image start|>"],
        eoi_token_id=specials["<|image end|>"],
        eol_token_id=specials["<|extra_200|>"],
        eof_token_id=specials["<|extra_201|>"],
    )
    (lm_dir / "config.json").write_text(json.dumps(lm_config, indent=2))

    def randn(*shape, scale=0.05):
        return torch.randn(*shape, generator=generator) * scale

    hidden, inter = lm_config["hidden_size"], lm_config["intermediate_size"]
    head_dim = hidden // lm_config["num_attention_heads"]
    kv = lm_config["num_key_value_heads"] * head_dim
    state = {"model.embed_tokens.weight": randn(vocab_size, hidden, scale=1.0)}
    for layer in range(lm_config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        state[p + "self_attn.q_proj.weight"] = randn(hidden, hidden, scale=0.2)
        state[p + "self_attn.k_proj.weight"] = randn(kv, hidden, scale=0.2)
        state[p + "self_attn.v_proj.weight"] = randn(kv, hidden, scale=0.2)
        state[p + "self_attn.o_proj.weight"] = randn(hidden, hidden, scale=0.2)
        state[p + "mlp.gate_proj.weight"] = randn(inter, hidden, scale=0.2)
        state[p + "mlp.up_proj.weight"] = randn(inter, hidden, scale=0.2)
        state[p + "mlp.down_proj.weight"] = randn(hidden, inter, scale=0.2)
        state[p + "input_layernorm.weight"] = 1 + randn(hidden, scale=0.1)
        state[p + "post_attention_layernorm.weight"] = 1 + randn(hidden, scale=0.1)
    state["model.norm.weight"] = 1 + randn(hidden, scale=0.1)
    state["lm_head.weight"] = randn(vocab_size, hidden, scale=0.1)

    names = list(state)
    per_shard = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: state[n].contiguous() for n in names[i * per_shard : (i + 1) * per_shard]}
        save_file(chunk, str(lm_dir / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (lm_dir / "model.safetensors.index.json").write_text(json.dumps(index))

    torch.manual_seed(seed + 1)
    vq = OriginalVQ(TINY_VQ)
    with torch.no_grad():
        for name, tensor in vq.state_dict().items():
            # Non-trivial norms and running statistics, so a dropped rename shows up.
            if name.endswith("running_mean"):
                tensor.copy_(randn(*tensor.shape, scale=0.1))
            elif name.endswith("running_var"):
                tensor.copy_(1 + randn(*tensor.shape, scale=0.1).abs())
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif ("norm" in name) and name.endswith("weight") and tensor.ndim == 1:
                tensor.copy_(1 + randn(*tensor.shape, scale=0.1))
            elif name.endswith("bias"):
                tensor.copy_(randn(*tensor.shape, scale=0.02))
    vq_state = {k: v.contiguous() for k, v in vq.state_dict().items()}
    save_file(vq_state, str(vq_dir / "model.safetensors"), metadata={"format": "pt"})
    (vq_dir / "config.json").write_text(json.dumps(TINY_VQ, indent=2))
    preprocessor = {
        "image_processor_type": "Emu3VisionVQImageProcessor",
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5],
        "image_std": [0.5],
        "min_pixels": 64 * 64,
        "max_pixels": 128 * 128,
        "spatial_factor": 8,
    }
    (vq_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return {
        "lm_dir": lm_dir,
        "vq_dir": vq_dir,
        "lm_config": lm_config,
        "lm_state": state,
        "vq_config": TINY_VQ,
        "vq": vq.eval(),
        "specials": specials,
    }
