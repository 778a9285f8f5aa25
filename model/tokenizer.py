"""Tokenizer + LLaVA conversation templates: text -> (input_ids, labels) with the image placeholder expanded.

A thin wrapper over the `tokenizers` library: tokenizer.json, or, when a checkpoint ships only SentencePiece's
tokenizer.model (MobileVLM, the original LLaMA / liuhaotian LLaVA), that file read by model/spm.py into the same
BPE with identical ids, plus "<image>" as a special token at the first id past the vocabulary (32000 for LLaMA's: the
id llava-hf gives it and the one model/config.py reads for liuhaotian / MobileVLM configs). pad = <unk> there, as
MobileVLM and LLaVA train. It adds what LLaVA needs on top:
  - the special ids (bos, eos, pad, unk, <image>) read from tokenizer.json's added tokens and, when present,
    tokenizer_config.json / special_tokens_map.json;
  - two conversation templates;
  - "<image>" expanded to `num_image_tokens` copies of image_token_id (llava-hf convention: input_ids hold one id per
    image patch embedding, the model splices the projected patches there);
  - the SFT/DPO label mask (labels = -100 where the loss must not look).

Templates (turn structure; the answer's leading space is the tokenizer's dummy prefix, see "Token boundaries"):
  vicuna_v1  LLaVA-1.5 training and benchmark evaluation (conv_vicuna_v1, `--version v1`):
             "{SYSTEM} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
  llava_hf   (alias "plain") the llava-hf chat template, no system sentence:  "USER: <image>\\n{q} ASSISTANT:"
             Multi-turn uses the same "{a}</s>USER:" joint as vicuna_v1 (the hub template has no </s>, which a model
             trained with it could never learn to stop on). Not LLaVA's pretraining template `conv_llava_plain`.

Labels: -100 on BOS, the system sentence, every USER/prompt token and the image tokens; every answer token and the
</s> after it is scored. Padding (pad_sequences) gets -100 too.

Image tag: a human turn's "<image>" is moved to the front as "<image>\\n" + rest.strip() (the original LLaVA's
preprocess_multimodal; the llava-hf chat template also renders images before text). If no turn has the tag and
num_image_tokens > 0, "<image>\\n" is prepended to the first human turn (LLaVA's eval loaders do the same). More than
one tag, a tag in an answer, or a tag with num_image_tokens == 0 is an error that names the turn.

Token boundaries (why the label mask is exact). The conversation is a list of segments: prompt text chunks (split
at "<image>"), image ids, answers, and </s> ids. Every segment is tokenized on its own and the ids concatenated, so a
token can never straddle a prompt/answer boundary and the mask is known per segment, not recovered afterwards.
  - Answers are encoded standalone, without the separator space: a LLaMA tokenizer's dummy prefix ("▁") plays the
    role of that space, so "{a}" gives the same ids as " {a}" inside "ASSISTANT: {a}" in one string (pieces never
    contain an inner "▁", so the boundary before "▁" is stable). The " " + answer alternative breaks on the legacy
    layout, whose Prepend normalizer would make it "▁▁{a}". Word-level tokenizers split on whitespace: no effect.
  - Prompt chunks, vicuna_v1: each chunk on its own, i.e. with its own dummy prefix. That is the original LLaVA:
    tokenizer_image_token encodes the text between "<image>" tags separately with the slow (legacy) SentencePiece
    tokenizer, which also prefixes the text after each "</s>". Hence "USER: <image>\\n" -> ▁USER : ▁ <img> ▁ <0x0A>.
  - Prompt chunks, llava_hf: as one string, like llava-hf's processor: a chunk that follows a special token (the
    image or </s>) is a continuation. With a non-legacy tokenizer.json (Metaspace, prepend_scheme "first") it gets no
    dummy prefix ("<img> <0x0A>", one token shorter than the original); with the legacy layout (Prepend normalizer,
    applied to every segment between added tokens) it does. See layout_style.md A6, pitfall 1. The continuation is
    encoded as "</s>" + chunk with the leading </s> id removed, which reproduces the one-string behaviour under
    either layout; a tokenizer that does not match "</s>" in text has no dummy prefix to decide about.
  Consequence: vicuna_v1 ids do not depend on which layout the tokenizer.json was saved in; llava_hf ids follow the
  file, exactly as transformers would. tests/test_tokenizer.py pins both, against emulations of both references.

Special names: bos/eos/unk/pad/image default to LLaMA's "<s>" "</s>" "<unk>" "<pad>" "<image>"; a CLIP tokenizer.json
(openai's "<|startoftext|>" 49406 / "<|endoftext|>" 49407) is recognised by those names when no side file says
otherwise, and openai's side files name <|endoftext|> as pad and unk too. The image token is optional: a CLIP text
tokenizer has none, and asking it to encode a conversation with an image is the error (naming the file).

Run the tests: .venv/bin/python -m pytest -q tests/test_tokenizer.py
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from .files import read_json, write_atomic, write_json
from .spm import tokenizer_from_spm

IGNORE_INDEX = -100
IMAGE_TAG = "<image>"
DEFAULT_TEMPLATE = "vicuna_v1"  # LLaVA-1.5's training and benchmark template (A5); every command's default
# default names, tried in order when no side file names the token: LLaMA's, then openai CLIP's
DEFAULT_NAMES = {"bos": ("<s>", "<|startoftext|>"), "eos": ("</s>", "<|endoftext|>"), "unk": ("<unk>",),
                 "pad": ("<pad>",), "image": (IMAGE_TAG,)}
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class Template:
    name: str
    system: str  # "" = no system sentence; otherwise followed by a space
    chunk_after_special: bool  # True: text after <image>/</s> gets its own dummy prefix (original LLaVA)
    user: str = "USER"
    assistant: str = "ASSISTANT"


TEMPLATES = {
    "vicuna_v1": Template("vicuna_v1", VICUNA_SYSTEM, chunk_after_special=True),
    "llava_hf": Template("llava_hf", "", chunk_after_special=False),
}
TEMPLATES["plain"] = TEMPLATES["llava_hf"]


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class Tokenizer:
    """tokenizer.json + special ids + LLaVA templates. Build with Tokenizer.from_pretrained(dir)."""

    def __init__(self, tk: HFTokenizer, special_names: dict | None = None, source: str = "<memory>",
                 image_token_id: int | None = None, name_sources: dict | None = None):
        """image_token_id: only for a tokenizer without an "<image>" token (the original liuhaotian checkpoints,
        whose model uses id 32000 = its vocab size); "<image>" text is split off in Python, so only the id is
        needed. Conflicting with an "<image>" the tokenizer does have is an error.
        special_names: {"bos"|"eos"|"unk"|"pad"|"image": token text} overriding the defaults; these must exist.
        name_sources: {key: file the name was read from}, for error messages."""
        self.tk = tk
        self.source = source
        explicit = dict(special_names or {})  # names read from side files: these must exist
        vocab = tk.get_vocab(with_added_tokens=True)
        # ids may be sparse or added tokens may sit past the model vocab: size = largest id + 1
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        names = {}
        for key, candidates in DEFAULT_NAMES.items():
            if key in explicit:
                names[key] = explicit[key]
                if tk.token_to_id(names[key]) is None:
                    origin = (name_sources or {}).get(key, "special_names")
                    raise ValueError(f"{source}: {key} token {names[key]!r} (named in {origin}) is not in the "
                                     f"vocabulary")
            else:  # the first default the vocabulary has, else the first (reported in errors as missing)
                names[key] = next((c for c in candidates if tk.token_to_id(c) is not None), candidates[0])
        self.special_names = names
        self.eos_id = tk.token_to_id(names["eos"])
        if self.eos_id is None:
            raise ValueError(f"{source}: the tokenizer has no {names['eos']!r} token; answers end with it "
                             f"(add it as a special token, or name the end token in tokenizer_config.json)")
        # None when the tokenizer has no image token (a CLIP text tokenizer): fine until an image is encoded
        self.image_token_id = tk.token_to_id(names["image"])
        if image_token_id is not None:
            if self.image_token_id is not None and self.image_token_id != image_token_id:
                raise ValueError(f"{source}: image_token_id={image_token_id} given, but the tokenizer's "
                                 f"{names['image']!r} is id {self.image_token_id}")
            self.image_token_id = image_token_id
        self.bos_id = tk.token_to_id(names["bos"])  # None: sequences start without BOS
        self.unk_id = tk.token_to_id(names["unk"])
        pad = tk.token_to_id(names["pad"])
        # the original LLaVA pads with unk; llava-hf has a dedicated <pad>; eos as a last resort (padding is masked)
        self.pad_id = pad if pad is not None else (self.unk_id if self.unk_id is not None else self.eos_id)
        # Can "</s>" + text be used to encode text as it would continue after a special token? (see docstring)
        self._eos_in_text = tk.encode(names["eos"], add_special_tokens=False).ids == [self.eos_id]

    @classmethod
    def from_pretrained(cls, path: str, image_token_id: int | None = None) -> "Tokenizer":
        """`path` is a directory holding tokenizer.json (+ optional tokenizer_config.json, special_tokens_map.json),
        or the tokenizer.json file itself. image_token_id: see __init__."""
        path = os.fspath(path)
        dir_ = os.path.dirname(path) if path.endswith((".json", ".model")) else path
        file = path if path.endswith((".json", ".model")) else os.path.join(dir_, "tokenizer.json")
        if not path.endswith(".json") and not os.path.isfile(file):  # the original LLaMA / LLaVA / MobileVLM files
            file = path if path.endswith(".model") else os.path.join(dir_, "tokenizer.model")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer file not found: {os.path.join(dir_, 'tokenizer.json')} (nor a "
                                    "SentencePiece tokenizer.model beside it)")
        if file.endswith(".model"):
            tk = tokenizer_from_spm(file)
            if tk.token_to_id(IMAGE_TAG) is None:  # LLaVA's convention: the image id right after the vocabulary
                tk.add_special_tokens([AddedToken(IMAGE_TAG, special=True, normalized=False)])
        else:
            try:
                tk = HFTokenizer.from_file(file)
            except Exception as e:  # tokenizers raises a bare Exception on bad JSON / unknown variants
                raise ValueError(f"{file}: cannot load tokenizer ({e})") from None
        names, origins = {}, {}
        # special_tokens_map.json first, tokenizer_config.json wins (transformers' precedence for the same keys)
        for side in ("special_tokens_map.json", "tokenizer_config.json"):
            cfg = _read_json(os.path.join(dir_, side))
            for key in ("bos", "eos", "unk", "pad", "image"):
                v = cfg.get(f"{key}_token")
                if isinstance(v, dict):  # {"content": "<s>", "lstrip": ...}
                    v = v.get("content")
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"{os.path.join(dir_, side)}: {key}_token must be a string, got {v!r}")
                if v:
                    names[key], origins[key] = v, os.path.join(dir_, side)
            extra = cfg.get("extra_special_tokens")  # transformers 5.x keeps "image_token" here
            if isinstance(extra, dict) and isinstance(extra.get("image_token"), str):
                names["image"], origins["image"] = extra["image_token"], os.path.join(dir_, side)
        return cls(tk, names, source=file, image_token_id=image_token_id, name_sources=origins)

    def hf_tokenizer_config(self) -> dict:
        """tokenizer_config.json for transformers / vLLM: PreTrainedTokenizerFast runs tokenizer.json's own pipeline
        unchanged (a model-specific class may rebuild parts of it), with the special names resolved here."""
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.bos_id is not None,
               "add_eos_token": False, "clean_up_tokenization_spaces": False, "padding_side": "left"}
        for key, i in (("bos", self.bos_id), ("eos", self.eos_id), ("unk", self.unk_id), ("pad", self.pad_id)):
            if i is not None:
                cfg[f"{key}_token"] = self.tk.id_to_token(i)
        if self.image_token_id is not None and self.tk.token_to_id(self.special_names["image"]) is not None:
            cfg["extra_special_tokens"] = {"image_token": self.special_names["image"]}  # -> tokenizer.image_token
        return cfg

    def save_pretrained(self, dir_: str):
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (what transformers' AutoTokenizer
        reads), each atomically."""
        os.makedirs(dir_, exist_ok=True)
        cfg = self.hf_tokenizer_config()
        tok_map = {k: v for k, v in cfg.items() if k.endswith("_token")}
        write_atomic(os.path.join(dir_, "tokenizer.json"), self.tk.to_str())
        write_json(os.path.join(dir_, "tokenizer_config.json"), cfg)
        write_json(os.path.join(dir_, "special_tokens_map.json"), tok_map)

    # ---- plain text -------------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Text -> ids with the tokenizer's own pre-tokenizer; no post-processor (BOS only when asked)."""
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"{self.source}: add_bos=True but the tokenizer has no BOS token")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids (list or 1-D tensor) -> text via the tokenizer's decoder (word-level without one: words joined by
        spaces). An id outside the vocabulary is an error (`tokenizers` would drop it silently)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        for pos, i in enumerate(ids):
            if skip_special_tokens and i == self.image_token_id:
                continue  # an id given by image_token_id= may lie outside the vocabulary; it is special anyway
            if not 0 <= i < self.vocab_size or self.tk.id_to_token(i) is None:
                raise ValueError(f"decode: id {i} at position {pos} is not in the vocabulary "
                                 f"(size {self.vocab_size}, {self.source})")
        if skip_special_tokens:
            ids = [i for i in ids if i != self.image_token_id]
        return self.tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str):
        return self.tk.token_to_id(token)

    def id_to_token(self, i: int):
        return self.tk.id_to_token(i)

    def _encode_continuation(self, text: str) -> list[int]:
        """Encode `text` as it tokenizes right after a special token inside one string (see module docstring)."""
        if not self._eos_in_text:
            return self.encode(text)
        ids = self.tk.encode(self.special_names["eos"] + text, add_special_tokens=False).ids
        assert ids[0] == self.eos_id, "eos marker not matched at the start"  # checked once in __init__
        return ids[1:]

    # ---- conversations ----------------------------------------------------------------------------------------
    def _normalize_turns(self, turns, num_image_tokens: int) -> list[tuple[str, str]]:
        """Validate LLaVA conversation turns; place the image tag. Returns [(role, text)] with role human/gpt."""
        if not isinstance(num_image_tokens, int) or num_image_tokens < 0:
            raise ValueError(f"num_image_tokens must be an int >= 0, got {num_image_tokens!r}")
        if not isinstance(turns, (list, tuple)) or not turns:
            raise ValueError("conversation has no turns")
        out, tagged = [], None
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or "from" not in t or "value" not in t:
                raise ValueError(f"turn {i}: expected {{'from': 'human'|'gpt', 'value': str}}, got {t!r}")
            role, text = t["from"], t["value"]
            want = "human" if i % 2 == 0 else "gpt"
            if role not in ("human", "gpt"):
                raise ValueError(f"turn {i}: unknown role {role!r} (expected 'human' or 'gpt')")
            if role != want:
                raise ValueError(f"turn {i}: expected a {want!r} turn (turns alternate, starting with 'human'), "
                                 f"got {role!r}")
            if not isinstance(text, str):
                raise ValueError(f"turn {i}: value must be a string, got {type(text).__name__}")
            n = text.count(IMAGE_TAG)
            if n and role == "gpt":
                raise ValueError(f"turn {i}: an answer ('gpt' turn) contains {IMAGE_TAG!r}")
            if n and (n > 1 or tagged is not None):
                raise ValueError(f"turn {i}: more than one {IMAGE_TAG!r} in the conversation (one image per sample)")
            if n:
                if num_image_tokens == 0:
                    raise ValueError(f"turn {i}: contains {IMAGE_TAG!r} but num_image_tokens is 0")
                tagged = i
                text = IMAGE_TAG + "\n" + text.replace(IMAGE_TAG, "").strip()  # LLaVA's preprocess_multimodal
            out.append((role, text))
        if tagged is None and num_image_tokens > 0:
            out[0] = ("human", IMAGE_TAG + "\n" + out[0][1])
        if num_image_tokens > 0 and self.image_token_id is None:
            raise ValueError(f"{self.source}: this tokenizer has no {self.special_names['image']!r} token, so it "
                             f"cannot encode a conversation with an image (a text-only tokenizer such as CLIP's? "
                             f"use the LLaVA checkpoint's tokenizer, or pass image_token_id=)")
        return out

    def _segments(self, turns, template: Template):
        """Render turns to [(kind, text_or_None, scored)], kind in text/image/answer/eos."""
        segs, prefix = [], (template.system + " " if template.system else "")
        for k in range(0, len(turns), 2):
            q = turns[k][1]
            prompt = prefix + f"{template.user}: {q} {template.assistant}:"
            prefix = ""  # the next USER follows </s> directly
            for j, chunk in enumerate(prompt.split(IMAGE_TAG)):
                if j:
                    segs.append(("image", None, False))
                if chunk:
                    segs.append(("text", chunk, False))
            if k + 1 < len(turns):
                segs.append(("answer", turns[k + 1][1], True))
                segs.append(("eos", None, True))
        return segs

    def _tokenize(self, turns, num_image_tokens: int, template: str) -> tuple[list[int], list[int]]:
        tpl = get_template(template)
        ids = [] if self.bos_id is None else [self.bos_id]
        labels = [IGNORE_INDEX] * len(ids)
        after_special = False  # the previous segment was an image or </s>
        for kind, text, scored in self._segments(self._normalize_turns(turns, num_image_tokens), tpl):
            if kind == "image":
                piece = [self.image_token_id] * num_image_tokens
            elif kind == "eos":
                piece = [self.eos_id]
            elif kind == "text" and after_special and not tpl.chunk_after_special:
                piece = self._encode_continuation(text)
            else:  # first prompt chunk, vicuna_v1 chunks, answers: standalone (dummy prefix = separator space)
                piece = self.encode(text)
            ids += piece
            labels += piece if scored else [IGNORE_INDEX] * len(piece)
            after_special = kind in ("image", "eos")
        return ids, labels

    def encode_prompt(self, question: str, num_image_tokens: int, template: str = DEFAULT_TEMPLATE) -> list[int]:
        """BOS + prompt ending in "ASSISTANT:", ready for generation."""
        return self._tokenize([{"from": "human", "value": question}], num_image_tokens, template)[0]

    def encode_pair(self, question: str, answer: str, num_image_tokens: int,
                    template: str = DEFAULT_TEMPLATE) -> tuple[list[int], list[int]]:
        """One DPO/SFT example: (input_ids, labels), answer + </s> scored."""
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return self._tokenize(turns, num_image_tokens, template)

    def encode_chat(self, turns, num_image_tokens: int,
                    template: str = DEFAULT_TEMPLATE) -> tuple[list[int], list[int]]:
        """LLaVA conversation JSON turns -> (input_ids, labels). A final unanswered human turn ends in "ASSISTANT:"."""
        return self._tokenize(turns, num_image_tokens, template)


def pad_sequences(seqs, pad_id: int, side: str = "left", labels=None):
    """Pad id lists to a batch. Returns (input_ids, attention_mask) or (input_ids, attention_mask, labels), all
    (B, T) long tensors; attention_mask is 1 on real tokens; labels are padded with -100.
    Left padding is what generation needs (the last column is every row's newest token)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not seqs:
        raise ValueError("pad_sequences: empty batch")
    if labels is not None:
        if len(labels) != len(seqs):
            raise ValueError(f"pad_sequences: {len(seqs)} sequences but {len(labels)} label rows")
        for i, (s, l) in enumerate(zip(seqs, labels)):
            if len(s) != len(l):
                raise ValueError(f"pad_sequences: row {i} has {len(s)} ids but {len(l)} labels")
    B, T = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    lab = torch.full((B, T), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for i, s in enumerate(seqs):
        n = len(s)
        cols = slice(T - n, T) if side == "left" else slice(0, n)
        if n:
            ids[i, cols] = torch.as_tensor(s, dtype=torch.long)
            mask[i, cols] = 1
            if lab is not None:
                lab[i, cols] = torch.as_tensor(labels[i], dtype=torch.long)
    return (ids, mask) if lab is None else (ids, mask, lab)
