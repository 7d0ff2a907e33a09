import numpy as np
import pytest

from progemu_lite.tokenization.text import (
    BOI,
    BOS,
    EOF,
    EOI,
    EOL,
    EOS,
    IMG,
    PAD,
    PLACEHOLDER,
    SPECIAL_TOKENS,
    TokenIds,
    load_text_tokenizer,
    train_text_tokenizer,
    visual_token,
    vocabulary_corpus,
)

TEXTS = [
    "The left pleural effusion becomes moderate.",
    "New moderate left pleural effusion. No pneumothorax. Unchanged heart size.",
    "Persistent mild cardiomegaly. The right lower lobe consolidation resolves.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer(TEXTS * 5 + vocabulary_corpus(), codebook_size=64, vocab_size=400)


def test_id_layout_text_then_specials_then_visual(tokenizer):
    ids = TokenIds.from_tokenizer(tokenizer)
    vocab = tokenizer.get_vocab()
    assert ids.text_vocab_size <= 400
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(
        range(ids.text_vocab_size, ids.text_vocab_size + len(SPECIAL_TOKENS))
    )
    assert (ids.pad, ids.bos, ids.eos) == (vocab[PAD], vocab[BOS], vocab[EOS])
    assert (ids.boi, ids.eoi, ids.img, ids.eol, ids.eof) == tuple(
        vocab[t] for t in (BOI, EOI, IMG, EOL, EOF)
    )
    assert ids.placeholder == vocab[PLACEHOLDER]
    assert ids.codebook_size == 64 and len(tokenizer) == ids.vocab_size
    for code in (0, 17, 63):
        assert vocab[visual_token(code)] == ids.visual_offset + code
    # every ordinary text maps into the text range
    for text in TEXTS + ["Ünïcödé & 12*34 !?"]:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        assert max(encoded) < ids.text_vocab_size
        assert tokenizer.decode(encoded) == text


def test_visual_token_spelling_is_emu3s():
    assert visual_token(123) == "<|visual token 000123|>"
    assert visual_token(32767) == "<|visual token 032767|>"


def test_special_tokens_are_single_ids_and_bos_is_not_added(tokenizer):
    ids = TokenIds.from_tokenizer(tokenizer)
    text = BOS + BOI + IMG + visual_token(5) + EOL + EOF + EOI + EOS
    assert tokenizer.encode(text) == [
        ids.bos, ids.boi, ids.img, ids.visual_offset + 5, ids.eol, ids.eof, ids.eoi, ids.eos,
    ]  # fmt: skip
    assert tokenizer.encode("left") == tokenizer.encode("left", add_special_tokens=False)
    assert tokenizer.bos_token == BOS and tokenizer.eos_token == EOS and tokenizer.pad_token == PAD


def test_emu3_processor_accepts_the_tokenizer(tokenizer):
    from transformers import Emu3ImageProcessor, Emu3Processor

    # 64x64 images as they are (the default would upscale to 512x512: 4k placeholders)
    image_processor = Emu3ImageProcessor(min_pixels=64 * 64, max_pixels=64 * 64)
    processor = Emu3Processor(image_processor, tokenizer)
    ids = TokenIds.from_tokenizer(tokenizer)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    out = processor(text=["Prior: <image> The effusion worsens."], images=[image])
    input_ids = out["input_ids"][0]
    assert input_ids[0] == ids.bos
    assert input_ids.count(ids.boi) == 1 and input_ids.count(ids.eoi) == 1
    assert ids.placeholder in input_ids and ids.img in input_ids and ids.eof in input_ids
    assert input_ids.count(ids.placeholder) == 8 * 9  # 8x8 grid, one extra column for EOL
    gen = processor(text=["The effusion worsens."], return_for_image_generation=True)
    h, w = gen["image_sizes"][0]
    assert gen["input_ids"][0][-1] == ids.img
    assert tokenizer.decode(gen["input_ids"][0]).endswith(f"{BOI}{h}*{w}{IMG}")


def test_save_and_load_keep_layout_and_attributes(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_text_tokenizer(tmp_path)
    assert TokenIds.from_tokenizer(loaded) == TokenIds.from_tokenizer(tokenizer)
    assert (loaded.boi_token, loaded.eoi_token, loaded.image_wrapper_token) == (BOI, EOI, IMG)
    assert (loaded.eof_token, loaded.image_token) == (EOF, PLACEHOLDER)
    text = TEXTS[1] + visual_token(3) + EOS
    assert loaded.encode(text) == tokenizer.encode(text)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_text_tokenizer(tmp_path)


def test_foreign_tokenizer_is_rejected():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.add_special_tokens([BOS, EOS])
    with pytest.raises(ValueError, match="lacks the Emu3 special tokens"):
        TokenIds.from_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend))


def test_bad_training_arguments():
    with pytest.raises(ValueError, match="no texts"):
        train_text_tokenizer(["", ""], codebook_size=8)
    with pytest.raises(ValueError, match="at least 256"):
        train_text_tokenizer(TEXTS, codebook_size=8, vocab_size=100)
    with pytest.raises(ValueError, match="codebook_size"):
        train_text_tokenizer(TEXTS, codebook_size=0)
