import numpy as np
import pytest

from progemu_lite.tokenization.sequence import (
    IGNORE_INDEX,
    SequenceBuilder,
    augment_condition,
    augment_sentences,
    render_image,
    render_sequence,
)
from progemu_lite.tokenization.text import train_text_tokenizer, vocabulary_corpus

PRIOR = np.array([[5, 17, 123], [0, 42, 1023]])
FOLLOWUP = np.array([[7, 7, 8], [1000, 1, 2]])
PROMPT = "The left pleural effusion becomes moderate."
REPORT = "New moderate left pleural effusion. No pneumothorax."

# Written by hand from the format specification (DESIGN.md section 3), not from the code.
GOLDEN = (
    "<|extra_203|>"
    "<|image start|>2*3<|image token|>"
    "<|visual token 000005|><|visual token 000017|><|visual token 000123|><|extra_200|>"
    "<|visual token 000000|><|visual token 000042|><|visual token 001023|><|extra_200|>"
    "<|extra_201|><|image end|>"
    "The left pleural effusion becomes moderate."
    "<|image start|>2*3<|image token|>"
    "<|visual token 000007|><|visual token 000007|><|visual token 000008|><|extra_200|>"
    "<|visual token 001000|><|visual token 000001|><|visual token 000002|><|extra_200|>"
    "<|extra_201|><|image end|>"
    "New moderate left pleural effusion. No pneumothorax."
    "<|extra_204|>"
)


@pytest.fixture(scope="module")
def builder():
    tok = train_text_tokenizer(
        [PROMPT, REPORT] * 5 + vocabulary_corpus(), codebook_size=1024, vocab_size=512
    )
    return SequenceBuilder(tok)


def test_golden_sequence_string():
    assert render_sequence(PRIOR, PROMPT, FOLLOWUP, REPORT) == GOLDEN


def test_golden_prefix_and_null_condition():
    prefix = GOLDEN[: GOLDEN.index("<|visual token 000007|>")]
    assert render_sequence(PRIOR, PROMPT) == prefix
    assert (
        render_sequence(None, "", grid=(2, 3)) == "<|extra_203|><|image start|>2*3<|image token|>"
    )
    assert render_image(FOLLOWUP).count("<|extra_200|>") == 2


def test_id_builder_equals_tokenizer_encoding(builder):
    tok = builder.tokenizer
    input_ids, labels = builder.training_ids(PRIOR, PROMPT, FOLLOWUP, REPORT)
    assert input_ids.tolist() == tok.encode(GOLDEN, add_special_tokens=False)
    assert np.array_equal(labels, input_ids)
    prefix = builder.prefix_ids(PRIOR, PROMPT)
    assert prefix.tolist() == tok.encode(render_sequence(PRIOR, PROMPT), add_special_tokens=False)
    assert input_ids[: len(prefix)].tolist() == prefix.tolist()
    null = builder.null_prefix_ids((2, 3))
    assert null.tolist() == tok.encode(render_sequence(None, "", grid=(2, 3)))
    # a bigger random grid and the null-condition training sequence
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 1024, (16, 16)), rng.integers(0, 1024, (16, 16))
    ids, _ = builder.training_ids(None, "", b, REPORT)
    assert ids.tolist() == tok.encode(render_sequence(None, "", b, REPORT))
    ids, _ = builder.training_ids(a, PROMPT, b, "")
    assert ids.tolist() == tok.encode(render_sequence(a, PROMPT, b, ""))


def test_parse_generated_round_trip(builder):
    input_ids, _ = builder.training_ids(PRIOR, PROMPT, FOLLOWUP, REPORT)
    generated = input_ids[len(builder.prefix_ids(PRIOR, PROMPT)) :]
    padded = np.concatenate([generated, [builder.ids.pad] * 3])
    parsed = builder.parse_generated(padded, (2, 3))
    assert np.array_equal(parsed.codes, FOLLOWUP)
    assert parsed.text == REPORT and parsed.ended


def test_parse_generated_names_the_problem(builder):
    ids = builder.ids
    good = builder.training_ids(PRIOR, PROMPT, FOLLOWUP, REPORT)[0]
    generated = good[len(builder.prefix_ids(PRIOR, PROMPT)) :].copy()
    broken = generated.copy()
    broken[5] = ids.eos  # row 1, column 1
    with pytest.raises(ValueError, match="row 1, column 1 is not visual"):
        builder.parse_generated(broken, (2, 3))
    broken = generated.copy()
    broken[3] = ids.visual_offset
    with pytest.raises(ValueError, match="row 0 does not end with EOL"):
        builder.parse_generated(broken, (2, 3))
    with pytest.raises(ValueError, match="needs 10"):
        builder.parse_generated(generated[:6], (2, 3))
    unfinished = builder.parse_generated(generated[:-1], (2, 3))
    assert not unfinished.ended and unfinished.text == REPORT


def test_text_with_special_tokens_and_bad_codes_are_rejected(builder):
    with pytest.raises(ValueError, match="special tokens"):
        builder.training_ids(PRIOR, "sneaky <|extra_204|> prompt", FOLLOWUP, REPORT)
    with pytest.raises(ValueError, match="outside the tokenizer codebook"):
        builder.training_ids(PRIOR, PROMPT, FOLLOWUP + 1024, REPORT)
    with pytest.raises(ValueError, match="2-D"):
        builder.prefix_ids(PRIOR.reshape(-1), PROMPT, (2, 3))


def test_collate_pads_labels_with_ignore_index(builder):
    a = builder.training_ids(PRIOR, PROMPT, FOLLOWUP, REPORT)
    b = builder.training_ids(None, "", FOLLOWUP, "")
    batch = builder.collate([a, b])
    n_b = len(b[0])
    assert batch["input_ids"].shape == (2, len(a[0]))
    assert batch["attention_mask"][1].sum() == n_b
    assert (batch["labels"][1, n_b:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, n_b:] == builder.ids.pad).all()
    left = builder.collate([a, b], padding_side="left")
    assert left["input_ids"][1, -n_b:].tolist() == b[0].tolist()


def test_augmentations_follow_the_official_rules():
    text = "No pneumothorax. The effusion worsens. Unchanged heart size."
    rng = np.random.default_rng(0)
    assert augment_sentences(text, rng, shuffle_prob=0, drop_negative_prob=0) == text
    dropped = augment_sentences(text, rng, shuffle_prob=0, drop_negative_prob=1)
    assert dropped == "The effusion worsens. Unchanged heart size."
    shuffled = {
        augment_sentences(text, rng, shuffle_prob=1, drop_negative_prob=0) for _ in range(40)
    }
    assert len(shuffled) > 1
    assert all(
        sorted(s.rstrip(".").split(". ")) == sorted(text.rstrip(".").split(". ")) for s in shuffled
    )
    assert augment_sentences("One sentence only.", rng, shuffle_prob=1, drop_negative_prob=1) == (
        "One sentence only."
    )
    # null condition: both the prior and the prompt go, at about the official rate
    rng = np.random.default_rng(1)
    outcomes = [augment_condition(PRIOR, PROMPT, rng) for _ in range(20000)]
    nulls = sum(prior is None for prior, _ in outcomes)
    assert all(prompt == "" for prior, prompt in outcomes if prior is None)
    assert 120 < nulls < 290  # p=0.01 of 20000 = 200
    assert augment_condition(PRIOR, PROMPT, rng, null_prob=1.0) == (None, "")
