import numpy as np
import pytest
import torch

from progemu_lite.model import generation
from progemu_lite.model.config import build_model
from progemu_lite.model.generation import (
    PACKED_GQA_SDPA,
    GridConstraint,
    SamplingSettings,
    generate,
    guided_log_probs,
)
from progemu_lite.tokenization.sequence import SequenceBuilder
from progemu_lite.tokenization.text import train_text_tokenizer, vocabulary_corpus

GRID = (8, 8)  # tiny preset: 64x64 images
PROMPTS = [
    "The left pleural effusion becomes moderate.",
    "No change.",
    "The right upper lobe consolidation resolves. Unchanged heart size.",
]


@pytest.fixture(scope="module")
def setup():
    # One thread: a tiny model gains nothing from two, and loses a lot on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = train_text_tokenizer(vocabulary_corpus(), codebook_size=256, vocab_size=512)
    builder = SequenceBuilder(tok)
    model = build_model("tiny", tok, seed=0)
    rng = np.random.default_rng(0)
    prefixes = [builder.prefix_ids(rng.integers(0, 256, GRID), p) for p in PROMPTS]
    yield model, builder, prefixes
    torch.set_num_threads(threads)


def _check_layout(seq: np.ndarray, builder, max_text_tokens: int):
    ids = builder.ids
    h, w = GRID
    rows = seq[: h * (w + 1)].reshape(h, w + 1)
    assert ((rows[:, :w] >= ids.visual_offset) & (rows[:, :w] < ids.vocab_size)).all()
    assert (rows[:, w] == ids.eol).all()
    assert seq[h * (w + 1)] == ids.eof and seq[h * (w + 1) + 1] == ids.eoi
    text = seq[h * (w + 1) + 2 : -1]
    assert seq[-1] == ids.eos
    assert 2 <= len(text) <= max_text_tokens
    assert (text < ids.text_vocab_size).all()


def test_phase_table_follows_the_official_layout(setup):
    _, builder, _ = setup
    ids = builder.ids
    c = GridConstraint(ids, (2, 3), 2000, max_text_tokens=4, min_text_tokens=2)
    offsets = torch.arange(1, 17)
    allowed = c.allowed[c.phases(offsets)]
    visual = set(range(ids.visual_offset, ids.visual_offset + ids.codebook_size))
    text = set(range(ids.text_vocab_size))
    expected = (
        [visual] * 3 + [{ids.eol}] + [visual] * 3 + [{ids.eol}]  # 2 rows of 3 + EOL
        + [{ids.eof}, {ids.eoi}]
        + [text] * 2  # min_text_tokens
        + [text | {ids.eos}] * 2  # up to max_text_tokens
        + [{ids.eos}]  # forced at the cap
        + [{ids.pad}]  # after the end
    )  # fmt: skip
    for offset, want, row in zip(offsets.tolist(), expected, allowed, strict=True):
        assert set(torch.nonzero(row).flatten().tolist()) == want, f"offset {offset}"
    finished = c.phases(torch.tensor([1, 11]), torch.tensor([True, False]))
    assert c.allowed[finished[0]].sum() == 1 and c.allowed[finished[0], ids.pad]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sampled_output_is_always_well_formed(setup, seed):
    model, builder, prefixes = setup
    settings = SamplingSettings(temperature=1.5, top_k=None, seed=seed, max_text_tokens=12)
    out = generate(model, prefixes, builder.ids, GRID, settings)
    for i in range(len(prefixes)):
        seq, probs = out.row(i)
        _check_layout(seq, builder, 12)
        assert ((probs > 0) & (probs <= 1)).all()
        parsed = builder.parse_generated(seq, GRID)
        assert parsed.codes.shape == GRID and parsed.ended
    # padding after each row's EOS
    for i, n in enumerate(out.lengths.tolist()):
        assert (out.sequences[i, n:] == builder.ids.pad).all()
        assert (out.probabilities[i, n:] == 0).all()


def test_greedy_output_is_well_formed_and_forced_tokens_are_certain(setup):
    model, builder, prefixes = setup
    out = generate(
        model, prefixes[:1], builder.ids, GRID, SamplingSettings(temperature=0, max_text_tokens=6)
    )
    seq, probs = out.row(0)
    _check_layout(seq, builder, 6)
    h, w = GRID
    forced = np.r_[np.arange(w, h * (w + 1), w + 1), h * (w + 1), h * (w + 1) + 1]
    assert np.allclose(probs[forced], 1.0)


def test_seeds_reproduce_and_differ(setup):
    model, builder, prefixes = setup

    def run(seed):
        s = SamplingSettings(seed=seed, max_text_tokens=8)
        return generate(model, prefixes, builder.ids, GRID, s).sequences

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_top_k_1_and_tiny_top_p_equal_greedy(setup):
    model, builder, prefixes = setup
    greedy = generate(
        model, prefixes, builder.ids, GRID, SamplingSettings(temperature=0, max_text_tokens=8)
    )
    top1 = generate(
        model, prefixes, builder.ids, GRID, SamplingSettings(top_k=1, seed=3, max_text_tokens=8)
    )
    nucleus = generate(
        model,
        prefixes,
        builder.ids,
        GRID,
        SamplingSettings(top_k=None, top_p=1e-6, seed=3, max_text_tokens=8),
    )
    assert torch.equal(greedy.sequences, top1.sequences)
    assert torch.equal(greedy.sequences, nucleus.sequences)


def test_text_temperature_applies_to_the_interpretation_only(setup):
    """Sampled image, greedy text: the image equals plain sampling with the same seed, and
    every text token is the model's most likely allowed token given everything before it."""
    model, builder, prefixes = setup
    ids = builder.ids
    h, w = GRID
    image_end = h * (w + 1) + 2  # grid rows with EOLs, EOF, EOI
    sampled = generate(model, prefixes, ids, GRID, SamplingSettings(seed=5, max_text_tokens=8))
    mixed = generate(
        model, prefixes, ids, GRID, SamplingSettings(seed=5, text_temperature=0, max_text_tokens=8)
    )
    assert torch.equal(sampled.sequences[:, :image_end], mixed.sequences[:, :image_end])
    for prefix, i in zip(prefixes, range(len(prefixes)), strict=True):
        seq, _ = mixed.row(i)
        _check_layout(seq, builder, 8)
        full = torch.as_tensor(np.concatenate([prefix, seq]))[None]
        with torch.no_grad():
            logits = model(input_ids=full).logits[0]
        allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
        allowed[: ids.text_vocab_size] = True
        allowed[ids.eos] = True
        # from the third text token EOS is allowed too; the last token may be a forced EOS
        for k in range(image_end + 2, len(seq) - 1):
            scores = logits[len(prefix) + k - 1].masked_fill(~allowed, float("-inf"))
            assert int(scores.argmax()) == int(seq[k])
    with pytest.raises(ValueError, match="text_temperature"):
        generate(model, prefixes, ids, GRID, SamplingSettings(text_temperature=-1))


def test_batched_equals_unbatched_greedy(setup):
    model, builder, prefixes = setup
    settings = SamplingSettings(temperature=0, max_text_tokens=10)
    batched = generate(model, prefixes, builder.ids, GRID, settings)
    assert len({len(p) for p in prefixes}) > 1  # left padding is exercised
    for i, prefix in enumerate(prefixes):
        single = generate(model, [prefix], builder.ids, GRID, settings)
        assert np.array_equal(single.row(0)[0], batched.row(i)[0])
        assert np.allclose(single.row(0)[1], batched.row(i)[1], atol=1e-5)


DEFAULT_WINDOW = generation.CACHE_WINDOW


@pytest.mark.parametrize("window", [8, DEFAULT_WINDOW])
def test_kv_cache_equals_naive_recomputation(setup, monkeypatch, window):
    # Attention reads a window of the static cache that moves on as the sequence grows
    # (every 8 tokens, or once past the default's 128 slots): the tokens must not change.
    monkeypatch.setattr(generation, "CACHE_WINDOW", window)
    model, builder, prefixes = setup
    longest = max(len(p) for p in prefixes) + GRID[0] * (GRID[1] + 1)  # prefix + image rows
    assert min(len(p) for p in prefixes) < DEFAULT_WINDOW < longest
    settings = SamplingSettings(temperature=0, max_text_tokens=4)
    cached = generate(model, prefixes[:2], builder.ids, GRID, settings)
    naive = generate(model, prefixes[:2], builder.ids, GRID, settings, use_cache=False)
    assert torch.equal(cached.sequences, naive.sequences)
    assert torch.allclose(cached.probabilities, naive.probabilities, atol=1e-5)


@pytest.mark.slow  # compiles a few graphs (about 10 s each)
def test_compiled_decode_steps_give_the_eager_tokens(setup, monkeypatch):
    # A window of 32 slots moves on several times in every generation.
    monkeypatch.setattr(generation, "CACHE_WINDOW", 32)
    _, builder, prefixes = setup
    # A model of its own: compiling switches its attention to the packed-GQA sdpa variant.
    model = build_model("tiny", builder.tokenizer, seed=0)
    assert (
        model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads
    )
    null = builder.prefix_ids(None, "", grid=GRID)
    cases = [
        (prefixes, SamplingSettings(seed=5, max_text_tokens=8)),  # left-padded batch
        (prefixes[:1], SamplingSettings(seed=6, max_text_tokens=8)),  # no padding
        (prefixes[:2], SamplingSettings(seed=7, max_text_tokens=8, guidance_scale=2.0)),
    ]
    for rows, settings in cases:
        eager = generate(model, rows, builder.ids, GRID, settings, null_prefix=null)
        compiled = generate(
            model, rows, builder.ids, GRID, settings, null_prefix=null, compiled=True
        )
        assert model.config._attn_implementation == PACKED_GQA_SDPA
        assert torch.equal(eager.sequences, compiled.sequences)
        assert torch.allclose(eager.probabilities, compiled.probabilities, atol=1e-5)
    # A second prompt of another length in the same cache bucket reuses the compiled graph.
    again = generate(model, prefixes[1:2], builder.ids, GRID, cases[1][1], compiled=True)
    assert torch.equal(
        again.sequences, generate(model, prefixes[1:2], builder.ids, GRID, cases[1][1]).sequences
    )


def test_interpreting_a_given_image_continues_exactly_like_drawing_it(setup):
    # The interpretation of a given follow-up is the same sequence with the image filled in:
    # handing the model its own greedy image back must give its own greedy text back.
    model, builder, prefixes = setup
    ids = builder.ids
    h, w = GRID
    settings = SamplingSettings(temperature=0, max_text_tokens=6)
    drawn = generate(model, prefixes, builder.ids, GRID, settings)
    given = []
    for i, prefix in enumerate(prefixes):
        seq = drawn.row(i)[0]
        codes = seq[: h * (w + 1)].reshape(h, w + 1)[:, :w] - ids.visual_offset
        given.append(np.concatenate([prefix, builder.grid_ids(codes), [ids.eof, ids.eoi]]))
    read = generate(model, given, builder.ids, GRID, settings)
    for i in range(len(prefixes)):
        full_ids, full_probs = drawn.row(i)
        text_ids, text_probs = read.row(i)
        assert text_ids[-1] == ids.eos and (text_ids[:-1] < ids.text_vocab_size).all()
        assert np.array_equal(text_ids, full_ids[h * (w + 1) + 2 :])
        assert np.allclose(text_probs, full_probs[h * (w + 1) + 2 :], atol=1e-5)


def test_prefixes_must_all_draw_or_all_read(setup):
    model, builder, prefixes = setup
    ids = builder.ids
    codes = np.zeros(GRID, dtype=np.int64)
    reading = np.concatenate([prefixes[0], builder.grid_ids(codes), [ids.eof, ids.eoi]])
    with pytest.raises(ValueError, match="got a mix or neither"):
        generate(model, [prefixes[0], reading], ids, GRID)
    with pytest.raises(ValueError, match="got a mix or neither"):
        generate(model, [prefixes[0][:-1]], ids, GRID)
    with pytest.raises(ValueError, match="not to reading one"):
        generate(
            model, [reading], ids, GRID, SamplingSettings(guidance_scale=3), null_prefix=reading
        )


def test_constraint_works_inside_transformers_generate(setup):
    from transformers import LogitsProcessorList

    model, builder, prefixes = setup
    ids = builder.ids
    constraint = GridConstraint(ids, GRID, model.config.text_config.vocab_size, max_text_tokens=6)
    x = torch.as_tensor(prefixes[0])[None]
    hf = model.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=constraint.max_new_tokens,
        do_sample=False,
        logits_processor=LogitsProcessorList([constraint]),
        pad_token_id=ids.pad,
        eos_token_id=ids.eos,
    )[0, x.shape[1] :].numpy()
    ours = generate(
        model, [prefixes[0]], ids, GRID, SamplingSettings(temperature=0, max_text_tokens=6)
    )
    assert np.array_equal(hf[hf != ids.pad], ours.row(0)[0])


def test_cfg_scale_one_is_no_guidance(setup):
    model, builder, prefixes = setup
    cond, uncond = torch.randn(2, 50), torch.randn(2, 50)
    assert torch.equal(guided_log_probs(cond, uncond, 1.0), torch.log_softmax(cond, -1))
    null = builder.null_prefix_ids(GRID)
    s = SamplingSettings(seed=5, max_text_tokens=6)
    plain = generate(model, prefixes, builder.ids, GRID, s)
    scale1 = generate(model, prefixes, builder.ids, GRID, s, null_prefix=null)
    assert torch.equal(plain.sequences, scale1.sequences)


def test_cfg_combines_conditional_and_null_logits(setup):
    model, builder, prefixes = setup
    ids = builder.ids
    null = builder.null_prefix_ids(GRID)
    scale = 3.0
    with torch.no_grad():
        cond = model(input_ids=torch.as_tensor(prefixes[0])[None]).logits[0, -1]
        uncond = model(input_ids=torch.as_tensor(null)[None]).logits[0, -1]
    expected = torch.log_softmax(uncond, -1) + scale * (
        torch.log_softmax(cond, -1) - torch.log_softmax(uncond, -1)
    )
    constraint = GridConstraint(ids, GRID, expected.shape[-1])
    expected = constraint.mask(expected[None], torch.tensor([1]))[0]
    settings = SamplingSettings(temperature=0, guidance_scale=scale, max_text_tokens=4)
    out = generate(model, prefixes[:1], ids, GRID, settings, null_prefix=null)
    first = int(out.sequences[0, 0])
    assert first == int(torch.argmax(expected))
    assert out.probabilities[0, 0].item() == pytest.approx(
        torch.softmax(expected, -1)[first].item(), rel=1e-4
    )
    unguided = generate(
        model, prefixes[:1], ids, GRID, SamplingSettings(temperature=0, max_text_tokens=4)
    )
    assert not torch.allclose(out.probabilities, unguided.probabilities)
    _check_layout(out.row(0)[0], builder, 4)


def test_text_guidance_scale_guides_the_interpretation_apart_from_the_image(setup):
    # Guidance on the image only (text scale 1): the image of full guidance, then the text the
    # unguided model reads off that image; and the text scale alone leaves the image unguided.
    model, builder, prefixes = setup
    ids = builder.ids
    h, w = GRID
    n_image = h * (w + 1) + 2
    null = builder.null_prefix_ids(GRID)

    def greedy(rows, **scales):
        settings = SamplingSettings(temperature=0, max_text_tokens=6, **scales)
        return generate(model, rows, ids, GRID, settings, null_prefix=null)

    guided = greedy(prefixes, guidance_scale=3.0)
    image_only = greedy(prefixes, guidance_scale=3.0, text_guidance_scale=1.0)
    text_only = greedy(prefixes, guidance_scale=1.0, text_guidance_scale=3.0)
    plain = greedy(prefixes)
    given = []
    for i, prefix in enumerate(prefixes):
        seq = image_only.row(i)[0]
        assert np.array_equal(seq[:n_image], guided.row(i)[0][:n_image])
        assert np.array_equal(text_only.row(i)[0][:n_image], plain.row(i)[0][:n_image])
        codes = seq[: h * (w + 1)].reshape(h, w + 1)[:, :w] - ids.visual_offset
        given.append(np.concatenate([prefix, builder.grid_ids(codes), [ids.eof, ids.eoi]]))
    read = greedy(given)
    for i in range(len(prefixes)):
        assert np.array_equal(read.row(i)[0], image_only.row(i)[0][n_image:])
    _check_layout(text_only.row(0)[0], builder, 6)


def test_bad_settings_are_errors(setup):
    model, builder, prefixes = setup
    with pytest.raises(ValueError, match="null-condition prefix"):
        generate(model, prefixes, builder.ids, GRID, SamplingSettings(guidance_scale=3))
    with pytest.raises(ValueError, match="null-condition prefix"):
        generate(model, prefixes, builder.ids, GRID, SamplingSettings(text_guidance_scale=2))
    with pytest.raises(ValueError, match="text_guidance_scale"):
        generate(model, prefixes, builder.ids, GRID, SamplingSettings(text_guidance_scale=-1))
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prefixes, builder.ids, GRID, SamplingSettings(temperature=-1))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prefixes, builder.ids, GRID, SamplingSettings(top_p=0))
    with pytest.raises(ValueError, match="max_text_tokens"):
        generate(model, prefixes, builder.ids, GRID, SamplingSettings(max_text_tokens=1))
    with pytest.raises(ValueError, match="no prefixes"):
        generate(model, [], builder.ids, GRID)
