"""model/spm.py + model/tokenizer.py on SentencePiece `tokenizer.model` files (MobileVLM ships no tokenizer.json).

No real LLaMA tokenizer.model comes from a package registry, so the reference is the `sentencepiece` package itself
(test-only): it trains tiny BPE models here - one set up like LLaMA's (identity normaliser, spaces kept, byte
fallback, split digits), one with its defaults (NFKC map, extra spaces removed), one without byte fallback - and its
encoder's ids are what ours must give on every string. Then the whole prompt: MobileVLM's own recipe
(conv_vicuna_v1's text, tokenizer_image_token: chunks split at "<image>", each encoded by the slow SentencePiece
tokenizer, BOS on the first only, the image's ids in between), emulated with sentencepiece, against encode_prompt /
encode_pair.
"""
import io

import pytest

spm = pytest.importorskip("sentencepiece")

from model.spm import tokenizer_from_spm  # noqa: E402
from model.tokenizer import IGNORE_INDEX, VICUNA_SYSTEM, Tokenizer  # noqa: E402

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A cat on a red table, next to 2 blue cups and 1234 plates.",
    "Describe   the image  in detail.\nThere is a dog, a frisbee and a person in the park.",
    "Café naïve façade 東京 über straße",
] * 40
LLAMA_LIKE = dict(normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
                  split_digits=True, vocab_size=360)
TESTS = ["", " ", "Hello world!", "  leading, inner   and trailing spaces  ", "A chat between a curious user",
         "What is in the image?\nDescribe it.", "Café 東京 ☃ emoji 🤖 naïve", "tab\there",
         "12345 + 678 = 13023",
         "USER: <image>\nWhat ASSISTANT:", "ﬁ ligature ＡＢＣ fullwidth", "\n\n", "a" * 40, "x y z . , ; ' \""]
# the official conv_vicuna_v1 system text (Meituan-AutoML/MobileVLM mobilevlm/conversation.py), roles USER / ASSISTANT,
# sep " " after the system sentence and the user turn, sep2 "</s>" after the answer
MOBILEVLM_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                       "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def train(tmp_path, name, **kw):
    buf = io.BytesIO()
    kw = {"model_type": "bpe", "character_coverage": 0.98, **kw}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, minloglevel=2, **kw)
    d = tmp_path / name
    d.mkdir()
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    return d, spm.SentencePieceProcessor(model_proto=buf.getvalue())


@pytest.mark.parametrize("kw", [LLAMA_LIKE, dict(byte_fallback=True, vocab_size=360),
                                dict(normalization_rule_name="identity", remove_extra_whitespaces=False,
                                     vocab_size=90)], ids=["llama-like", "nfkc-defaults", "no-byte-fallback"])
def test_ids_identical_to_sentencepiece(tmp_path, kw):
    d, sp = train(tmp_path, "m", **kw)
    tk = tokenizer_from_spm(str(d / "tokenizer.model"))
    assert tk.get_vocab_size() == sp.get_piece_size()
    for s in TESTS:
        ids = tk.encode(s, add_special_tokens=False).ids
        assert ids == sp.encode(s), repr(s)
        if kw.get("byte_fallback"):  # without it <unk> decodes as " ⁇ " in sentencepiece, as nothing here
            assert tk.decode(ids) == sp.decode(ids), repr(s)


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory):
    d, sp = train(tmp_path_factory.mktemp("spm"), "llama", **LLAMA_LIKE)
    # MobileVLM's side file: LLaMA's special tokens, no pad token (training sets pad = unk)
    (d / "tokenizer_config.json").write_text('{"bos_token": {"content": "<s>"}, "eos_token": {"content": "</s>"}, '
                                             '"unk_token": {"content": "<unk>"}, "pad_token": null, '
                                             '"tokenizer_class": "LlamaTokenizer", "add_bos_token": true}')
    return Tokenizer.from_pretrained(d), sp


def official_prompt_ids(sp, prompt: str, image_id: int, n_img: int):
    """mobilevlm/utils.py tokenizer_image_token with the slow tokenizer: chunks at "<image>", BOS first only."""
    chunks = [sp.encode(c) for c in prompt.split("<image>")]
    out = [1] + chunks[0]
    for c in chunks[1:]:
        out += [image_id] * n_img + c
    return out


def test_special_ids_pad_is_unk_image_after_vocab(llama_like):
    tok, sp = llama_like
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert tok.pad_id == tok.unk_id == 0  # MobileVLM's train.py: tokenizer.pad_token = tokenizer.unk_token
    assert tok.image_token_id == sp.get_piece_size()  # = vocab_size, the id model/config.py gives the image


def test_mobilevlm_v1_template_is_vicuna_v1(llama_like):
    tok, sp = llama_like
    assert VICUNA_SYSTEM == MOBILEVLM_V1_SYSTEM
    q, a, n = "What is in the image?", "A cat on a red table.", 5
    prompt = MOBILEVLM_V1_SYSTEM + " " + "USER: <image>\n" + q + " " + "ASSISTANT:"  # get_prompt(), open answer
    want = official_prompt_ids(sp, prompt, tok.image_token_id, n)
    assert tok.encode_prompt(q, n, template="vicuna_v1") == want
    # training: preprocess_v1 tokenizes "{prompt} {answer}</s>" the same way; labels only on the answer and </s>
    ids, labels = tok.encode_pair(q, a, n, template="vicuna_v1")
    full = official_prompt_ids(sp, prompt + " " + a, tok.image_token_id, n) + [2]
    assert ids == full
    n_prompt = len(want)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]) == a


def test_not_a_sentencepiece_model(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(b'{"version": "1.0", "model": {"type": "BPE"}}')  # a tokenizer.json renamed
    with pytest.raises(ValueError, match=r"tokenizer\.model: not a SentencePiece model"):
        Tokenizer.from_pretrained(d)
    (d / "tokenizer.model").write_bytes(b"")
    with pytest.raises(ValueError, match="tokenizer.model"):
        Tokenizer.from_pretrained(d)


def test_unigram_model_is_refused_by_name(tmp_path):
    d, _ = train(tmp_path, "uni", model_type="unigram", vocab_size=80)
    with pytest.raises(ValueError, match=r"tokenizer\.model: a SentencePiece UNIGRAM model; only BPE"):
        Tokenizer.from_pretrained(d)
