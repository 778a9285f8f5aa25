"""model/tokenizer.py: exact ids, label masks, image expansion and errors, on tokenizers built here.

LLaMA-like byte-fallback BPE (<unk>=0 <s>=1 </s>=2, <0x00>..<0xFF> = 3..258, so "\\n" = <0x0A> = 13), saved in both
serialized layouts of layout_style.md A6: non-legacy (Metaspace, prepend_scheme "first") and legacy (Prepend + Replace
normalizer). The vocabulary holds whole words: each word is built by a chain of prefix merges, the "▁word" chains
ranked before the bare-word chains so a "▁What" never splits into "▁" + "What". Characters outside it ("é", "\\n")
fall back to bytes.

References:
  vicuna_v1  the original LLaVA, emulated: conv_vicuna_v1's prompt string, split at "<image>", each chunk encoded with
             the legacy-layout file (= the slow SentencePiece tokenizer LLaVA used: dummy prefix on every piece
             between special tokens), image ids in between.
  llava_hf   transformers' LlavaProcessor + the hub chat template (text of layout_style.md A1), on both layouts.
Plus a word-level tokenizer (WordLevel + Whitespace), the toy world's kind.
"""
import json

import pytest
import torch
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from model.tokenizer import IGNORE_INDEX, VICUNA_SYSTEM, Tokenizer, pad_sequences

SPACE_WORDS = ("A chat between a curious user and an artificial intelligence assistant The gives helpful detailed "
               "polite answers to the questions USER ASSISTANT What is this It cat on table red Describe image "
               "color blue").split()
BARE_WORDS = ["USER", "What", "Describe"]  # as they appear right after "\n" or "</s>" with no dummy prefix


def build_bpe(layout: str) -> HFTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    words = ["▁" + w for w in SPACE_WORDS] + BARE_WORDS
    for c in ["▁"] + sorted(set("".join(words)) | set(".,:?'!")):
        vocab.setdefault(c, len(vocab))
    merges = []
    for w in words:
        for i in range(2, len(w) + 1):
            if w[:i] not in vocab:
                merges.append((w[: i - 1], w[i - 1]))
                vocab[w[:i]] = len(vocab)
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if layout == "metaspace":
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:  # legacy
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tk.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                      special_tokens=[("<s>", 1)])
    tk.add_special_tokens([AddedToken("<image>", special=True, normalized=False),
                           AddedToken("<pad>", special=True, normalized=False)])
    return tk


def save(tk: HFTokenizer, dir_, config=None):
    dir_.mkdir(parents=True, exist_ok=True)
    tk.save(str(dir_ / "tokenizer.json"))
    if config is not None:
        (dir_ / "tokenizer_config.json").write_text(json.dumps(config))
    return dir_


@pytest.fixture(scope="module")
def bpe_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    cfg = {"add_bos_token": True, "legacy": False, "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "padding_side": "left"}
    return {lay: save(build_bpe(lay), root / lay, cfg) for lay in ("metaspace", "legacy")}


@pytest.fixture(scope="module")
def tok(bpe_dirs):
    return Tokenizer.from_pretrained(bpe_dirs["metaspace"])


def toks(tok, ids):
    return [tok.id_to_token(i) for i in ids]


IMG, PAD = 462, 463  # the last two added tokens: <image>, <pad>


def test_special_ids(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert (tok.image_token_id, tok.pad_id, tok.vocab_size) == (IMG, PAD, 464)
    assert tok.id_to_token(13) == "<0x0A>" and tok.id_to_token(IMG) == "<image>"


def test_encode_decode_byte_fallback(tok):
    ids = tok.encode("What is é?\n", add_bos=True)
    assert toks(tok, ids) == ["<s>", "▁What", "▁is", "▁", "<0xC3>", "<0xA9>", "?", "<0x0A>"]
    assert ids == [1, 413, 414, 259, 198, 172, 265, 13]
    assert tok.decode(ids) == "What is é?\n"
    assert tok.decode(ids, skip_special_tokens=False) == "<s> What is é?\n"
    assert tok.decode(torch.tensor(ids)) == "What is é?\n"
    with pytest.raises(ValueError, match="id 9999 at position 1"):
        tok.decode([1, 9999])
    with pytest.raises(ValueError, match="id -100 at position 0"):
        tok.decode([-100])


def test_llava_hf_prompt_pinned_ids(tok):
    ids = tok.encode_prompt("What is this?", num_image_tokens=3, template="llava_hf")
    assert toks(tok, ids) == ["<s>", "▁USER", ":", "▁", "<image>", "<image>", "<image>", "<0x0A>", "What", "▁is",
                              "▁this", "?", "▁ASSISTANT", ":"]
    assert ids == [1, 401, 264, 259, IMG, IMG, IMG, 13, 454, 414, 416, 265, 409, 264]
    assert tok.encode_prompt("What is this?", 3, template="plain") == ids


def test_vicuna_v1_prompt_pinned_ids(tok):
    ids = tok.encode_prompt("What is this?", num_image_tokens=2)  # default template: vicuna_v1
    sys_ids = tok.encode(VICUNA_SYSTEM)
    assert ids[: 1 + len(sys_ids)] == [1] + sys_ids
    # the original LLaVA's chunking: "USER: " ends in a lone "▁", and the text after the image starts with one
    assert toks(tok, ids[1 + len(sys_ids):]) == ["▁USER", ":", "▁", "<image>", "<image>", "▁", "<0x0A>", "What", "▁is",
                                                  "▁this", "?", "▁ASSISTANT", ":"]
    assert ids[1 + len(sys_ids):] == [401, 264, 259, IMG, IMG, 259, 13, 454, 414, 416, 265, 409, 264]
    assert toks(tok, sys_ids[:4]) == ["▁A", "▁chat", "▁between", "▁a"]
    assert "<unk>" not in toks(tok, sys_ids) and "'" in toks(tok, sys_ids)  # "user's" -> ▁user ' s
    assert tok.decode(ids) == VICUNA_SYSTEM + " USER:  \nWhat is this? ASSISTANT:"  # image ids skipped


def test_pair_labels_mask_prompt_and_score_answer_and_eos(tok):
    for template in ("vicuna_v1", "llava_hf"):
        ids, labels = tok.encode_pair("What is this?", "It is a red cat.", 4, template)
        prompt = tok.encode_prompt("What is this?", 4, template)
        assert ids[: len(prompt)] == prompt and len(ids) == len(labels)
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        answer = ids[len(prompt):]
        assert toks(tok, answer) == ["▁It", "▁is", "▁a", "▁red", "▁cat", ".", "</s>"]
        assert labels[len(prompt):] == answer  # every answer token and </s> scored
        assert tok.decode(answer) == "It is a red cat."


def test_multi_turn_vicuna_v1_matches_original_llava(tok, bpe_dirs):
    legacy = HFTokenizer.from_file(str(bpe_dirs["legacy"] / "tokenizer.json"))
    turns = [{"from": "human", "value": "What is this?\n<image>"},  # tag at the end: moved to the front
             {"from": "gpt", "value": "It is a cat."},
             {"from": "human", "value": "What color is the cat?"},
             {"from": "gpt", "value": "blue"}]
    ids, labels = tok.encode_chat(turns, num_image_tokens=3)
    # conv_vicuna_v1.get_prompt() after preprocess_multimodal, then tokenizer_image_token with the slow tokenizer
    prompt = (VICUNA_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: It is a cat.</s>"
              "USER: What color is the cat? ASSISTANT: blue</s>")
    want = [1]
    for j, chunk in enumerate(prompt.split("<image>")):
        want += [IMG] * 3 * (j > 0) + legacy.encode(chunk, add_special_tokens=False).ids
    assert ids == want
    eos_at = [i for i, t in enumerate(ids) if t == 2]
    assert toks(tok, ids[eos_at[0]:eos_at[0] + 3]) == ["</s>", "▁USER", ":"]  # legacy: "▁USER" after </s>
    scored = [(i, t) for i, (t, l) in enumerate(zip(ids, labels)) if l != IGNORE_INDEX]
    assert all(labels[i] == t for i, t in scored)
    assert tok.decode([t for _, t in scored], skip_special_tokens=False) == "It is a cat.</s> blue</s>"
    assert [i for i, _ in scored][-2:] == [len(ids) - 2, len(ids) - 1]


def test_multi_turn_llava_hf_continues_after_eos(tok):
    turns = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "It is a cat."},
             {"from": "human", "value": "What color?"}]  # open last turn: ends in ASSISTANT: for generation
    ids, labels = tok.encode_chat(turns, 1, "llava_hf")
    assert toks(tok, ids) == ["<s>", "▁USER", ":", "▁", "<image>", "<0x0A>", "What", "▁is", "▁this", "?",
                              "▁ASSISTANT", ":", "▁It", "▁is", "▁a", "▁cat", ".", "</s>", "USER", ":", "▁What",
                              "▁color", "?", "▁ASSISTANT", ":"]
    assert [t for t, l in zip(ids, labels) if l != IGNORE_INDEX] == ids[12:18]


@pytest.mark.parametrize("layout", ["metaspace", "legacy"])
def test_llava_hf_matches_transformers_processor(bpe_dirs, layout):
    from PIL import Image
    from transformers import LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    tk = HFTokenizer.from_file(str(bpe_dirs[layout] / "tokenizer.json"))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    from model.hf_files import LLAVA_HF_CHAT_TEMPLATE as chat_template  # the hub's chat_template.json
    proc = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16},
                                                                crop_size={"height": 16, "width": 16}),
                          tokenizer=hf_tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=chat_template)  # 16/8 -> 4 image tokens
    ours = Tokenizer.from_pretrained(bpe_dirs[layout])
    for question in ("What is this?", "Describe the image é"):
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = proc.apply_chat_template(conv, add_generation_prompt=True)
        assert text == f"USER: <image>\n{question} ASSISTANT:"
        ref = proc(images=Image.new("RGB", (20, 20)), text=text)["input_ids"][0]
        assert ours.encode_prompt(question, 4, "llava_hf") == list(ref)
    # the A6 pitfall, pinned: the legacy file puts "▁" after <image>, the non-legacy one does not
    after_img = ours.encode_prompt("What", 1, "llava_hf")[5]
    assert ours.id_to_token(after_img) == ("▁" if layout == "legacy" else "<0x0A>")


def test_vicuna_v1_ids_do_not_depend_on_layout(bpe_dirs, tok):
    legacy = Tokenizer.from_pretrained(bpe_dirs["legacy"])
    turns = [{"from": "human", "value": "Describe this image."}, {"from": "gpt", "value": "A blue cat on a table."},
             {"from": "human", "value": "What is on the table?"}, {"from": "gpt", "value": "a cat"}]
    assert legacy.encode_chat(turns, 2) == tok.encode_chat(turns, 2)
    assert legacy.encode_pair("What?", "It is é.", 0) == tok.encode_pair("What?", "It is é.", 0)


def test_image_tag_rules(tok):
    # missing tag: prepended to the first human turn only when there are image tokens
    assert tok.encode_prompt("What is this?", 2, "llava_hf") == tok.encode_prompt("<image>\nWhat is this?", 2,
                                                                                  "llava_hf")
    no_img = tok.encode_prompt("What is this?", 0, "llava_hf")
    assert IMG not in no_img and toks(tok, no_img) == ["<s>", "▁USER", ":", "▁What", "▁is", "▁this", "?",
                                                      "▁ASSISTANT", ":"]
    assert tok.encode_prompt("What is this?", 5).count(IMG) == 5
    # tag in a later human turn: no second image prepended, the tag stays in its turn
    turns = [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "It"},
             {"from": "human", "value": "<image> What is this?"}]
    ids, _ = tok.encode_chat(turns, 2)
    assert ids.count(IMG) == 2 and ids.index(IMG) > ids.index(2)
    with pytest.raises(ValueError, match="turn 2: more than one"):
        tok.encode_chat([{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"},
                         {"from": "human", "value": "<image>c"}], 2)
    with pytest.raises(ValueError, match="turn 0: more than one"):
        tok.encode_prompt("<image><image>", 2)
    with pytest.raises(ValueError, match="turn 1: an answer"):
        tok.encode_pair("What?", "<image> It", 2)
    with pytest.raises(ValueError, match="turn 0: contains '<image>' but num_image_tokens is 0"):
        tok.encode_prompt("<image>\nWhat?", 0)
    with pytest.raises(ValueError, match="num_image_tokens"):
        tok.encode_prompt("What?", -1)


def test_bad_turns_name_the_turn(tok):
    cases = [([], "no turns"),
             ([{"from": "gpt", "value": "x"}], "turn 0: expected a 'human' turn"),
             ([{"from": "human", "value": "x"}, {"from": "human", "value": "y"}], "turn 1: expected a 'gpt'"),
             ([{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}], "turn 1: unknown role 'robot'"),
             ([{"from": "human"}], "turn 0: expected"),
             ([{"from": "human", "value": 3}], "turn 0: value must be a string")]
    for turns, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tok.encode_chat(turns, 1)
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        tok.encode_prompt("x", 1, template="chatml")


def build_word_level(extra=()) -> HFTokenizer:
    words = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER", ":", "ASSISTANT", "what", "is", "this", "?", "a",
             "red", "cat", ".", "A", "chat", *extra]
    tk = HFTokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(w, special=True) for w in ("<unk>", "<s>", "</s>", "<pad>", "<image>")])
    return tk


def test_word_level_tokenizer(tmp_path):
    wl = Tokenizer.from_pretrained(save(build_word_level(), tmp_path / "wl"))
    assert (wl.unk_id, wl.bos_id, wl.eos_id, wl.pad_id, wl.image_token_id, wl.vocab_size) == (0, 1, 2, 3, 4, 18)
    for template in ("llava_hf", "vicuna_v1"):
        ids, labels = wl.encode_pair("what is this?", "a red cat.", 2, template)
        tail = [5, 6, 4, 4, 8, 9, 10, 11, 7, 6, 12, 13, 14, 15, 2]  # USER : <img> <img> what is this ? ASSISTANT : ...
        assert ids[-len(tail):] == tail
        assert labels == [IGNORE_INDEX] * (len(ids) - 5) + [12, 13, 14, 15, 2]
    assert wl.encode_prompt("what is this?", 1, "llava_hf") == [1, 5, 6, 4, 8, 9, 10, 11, 7, 6]
    assert wl.decode([1, 12, 13, 14, 15, 2]) == "a red cat ."  # no decoder set: words joined by spaces
    assert wl.decode([12, 4, 10]) == "a this"  # <image> is special: skipped
    out = tmp_path / "saved"
    wl.save_pretrained(out)
    again = Tokenizer.from_pretrained(out)
    assert again.encode_pair("what is this?", "a cat", 2) == wl.encode_pair("what is this?", "a cat", 2)
    assert not list(out.glob("*.tmp"))


def test_side_files_and_missing_tokens(tmp_path):
    # names from tokenizer_config.json / special_tokens_map.json win over the defaults
    d = save(build_word_level(extra=("<eos>",)), tmp_path / "named",
             {"eos_token": {"content": "<eos>", "lstrip": False}, "pad_token": "<unk>"})
    named = Tokenizer.from_pretrained(d)
    assert (named.eos_id, named.pad_id) == (18, 0)
    assert named.encode_pair("what", "a", 0)[0][-1] == 18
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<bos>"}))
    with pytest.raises(ValueError, match=r"bos token '<bos>' \(named in .*special_tokens_map.json\) is not in the"):
        Tokenizer.from_pretrained(d)
    (d / "special_tokens_map.json").write_text("{not json")
    with pytest.raises(ValueError, match="special_tokens_map.json: not valid JSON"):
        Tokenizer.from_pretrained(d)
    # no <pad>: falls back to <unk> (the original LLaVA's padding); no <s>: sequences start without BOS
    vocab = {"<unk>": 0, "</s>": 1, "<image>": 2, "hi": 3}
    tk = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(w, special=True) for w in ("<unk>", "</s>", "<image>")])
    small = Tokenizer.from_pretrained(save(tk, tmp_path / "small"))
    assert (small.pad_id, small.bos_id) == (0, None)
    assert small.encode_pair("hi", "hi", 1, "llava_hf") == ([0, 0, 2, 3, 0, 0, 3, 1],
                                                            [-100, -100, -100, -100, -100, -100, 3, 1])
    with pytest.raises(ValueError, match="no BOS"):
        small.encode("hi", add_bos=True)
    # a tokenizer without <image> (original liuhaotian checkpoints): the id comes from the model config
    no_img = {"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}
    tk = HFTokenizer(models.WordLevel(vocab=no_img, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(w, special=True) for w in ("<unk>", "<s>", "</s>")])
    d = save(tk, tmp_path / "liuhaotian")
    text_only = Tokenizer.from_pretrained(d)  # loads: the image token is needed only once an image is encoded
    assert text_only.image_token_id is None and text_only.encode_prompt("hi", 0, "llava_hf")[0] == 1
    for call in (lambda: text_only.encode_prompt("hi", 2), lambda: text_only.encode_pair("<image> hi", "hi", 1)):
        with pytest.raises(ValueError, match=r"liuhaotian/tokenizer\.json: this tokenizer has no '<image>' token"):
            call()
    orig = Tokenizer.from_pretrained(d, image_token_id=4)
    assert orig.encode_prompt("hi", 2, "llava_hf") == [1, 0, 0, 4, 4, 3, 0, 0]  # unknown words: <unk>
    assert orig.decode([1, 4, 4, 3, 2]) == "hi" and orig.pad_id == 0
    with pytest.raises(ValueError, match="id 4 at position 1"):
        orig.decode([1, 4], skip_special_tokens=False)
    with pytest.raises(ValueError, match="image_token_id=3 given, but the tokenizer's '<image>' is id 2"):
        Tokenizer.from_pretrained(tmp_path / "small", image_token_id=3)
    # transformers 5.x keeps the image token name under extra_special_tokens
    d = save(build_word_level(extra=("<img>",)), tmp_path / "extra", {"extra_special_tokens": {"image_token": "<img>"}})
    assert Tokenizer.from_pretrained(d).image_token_id == 18
    v = {k: j for j, k in enumerate(k for k in vocab if k != "</s>")}
    t2 = HFTokenizer(models.WordLevel(vocab=v, unk_token="<unk>"))
    with pytest.raises(ValueError, match="no '</s>' token"):
        Tokenizer.from_pretrained(save(t2, tmp_path / "no_eos"))
    with pytest.raises(FileNotFoundError, match="nothing/tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="broken/tokenizer.json: cannot load"):
        Tokenizer.from_pretrained(tmp_path / "broken")


def test_pad_sequences():
    seqs, labels = [[5, 6, 7], [8]], [[-100, 6, 7], [8]]
    ids, mask, lab = pad_sequences(seqs, pad_id=0, side="left", labels=labels)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert lab.tolist() == [[-100, 6, 7], [-100, -100, 8]] and ids.dtype == torch.long
    ids, mask = pad_sequences(seqs, pad_id=9, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="row 1 has 1 ids but 2 labels"):
        pad_sequences(seqs, 0, labels=[[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="side"):
        pad_sequences(seqs, 0, side="middle")
    with pytest.raises(ValueError, match="empty batch"):
        pad_sequences([], 0)
