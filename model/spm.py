"""A SentencePiece `tokenizer.model` read by hand and rebuilt as a `tokenizers` BPE tokenizer, ids unchanged.

MobileVLM (like the original LLaMA, Vicuna and liuhaotian's LLaVA) ships only `tokenizer.model`: a serialized
sentencepiece.ModelProto (google/sentencepiece, src/sentencepiece_model.proto). The fields read here:

  ModelProto      1 pieces (repeated SentencePiece)  2 trainer_spec  3 normalizer_spec
  SentencePiece   1 piece (string)  2 score (float)  3 type: 1 NORMAL 2 UNKNOWN 3 CONTROL 4 USER_DEFINED 5 UNUSED 6 BYTE
  TrainerSpec     3 model_type (1 UNIGRAM 2 BPE)  24 treat_whitespace_as_suffix  35 byte_fallback
  NormalizerSpec  1 name  2 precompiled_charsmap  3 add_dummy_prefix (default true)
                  4 remove_extra_whitespaces (default true)  5 escape_whitespaces (default true)

SentencePiece's BPE encoder: normalise (identity for LLaMA; else the precompiled NFKC map), optionally drop leading,
trailing and repeated spaces, prepend one space (the "dummy prefix"), spaces -> "▁"; then, from single characters,
repeatedly merge the adjacent pair whose concatenation is a piece with the highest score; characters that are no
piece become their UTF-8 bytes <0xXX> (byte_fallback) or <unk>. The `tokenizers` equivalent: the same normaliser
steps, a BPE model whose merges are every split (a, b) of every piece a+b into two pieces, ranked by the score of
a+b (best first). Special pieces (<unk>, <s>, </s>) become special added tokens, so "</s>" in text is that token as
in transformers' LlamaTokenizer (SentencePiece itself would spell it out; nothing here feeds it such text).

    tk = tokenizer_from_spm("MobileVLM_V2-1.7B/tokenizer.model")   # a tokenizers.Tokenizer

Test: tests/test_mobilevlm_tokenizer.py (ids identical to the sentencepiece package's on every test string, for
models it trains in the test).
"""
from __future__ import annotations

import struct

from tokenizers import AddedToken, Regex, decoders, models, normalizers, processors
from tokenizers import Tokenizer as HFTokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE = 2
SPACE = "▁"


# ---------------------------------------------------------------------------------------------- protobuf wire format
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return out, i
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one message: ints for varints, bytes for the rest."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire} (groups are not used by sentencepiece)")
        if i > len(buf):
            raise ValueError("message runs past the end of the file")
        yield num, wire, val


def read_model_proto(data: bytes) -> dict:
    """The fields of a ModelProto this module needs: pieces [(piece, score, type)], trainer and normalizer specs."""
    pieces, trainer, norm = [], {}, {}
    for num, wire, val in _fields(data):
        if num == 1 and wire == 2:
            p = {"piece": None, "score": 0.0, "type": NORMAL}
            for n, w, v in _fields(val):
                if n == 1 and w == 2:
                    p["piece"] = v.decode("utf-8")
                elif n == 2 and w == 5:
                    p["score"] = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    p["type"] = v
            if not p["piece"]:
                raise ValueError(f"piece {len(pieces)} has no text")
            pieces.append((p["piece"], p["score"], p["type"]))
        elif num == 2 and wire == 2:
            trainer = {n: v for n, w, v in _fields(val)}
        elif num == 3 and wire == 2:
            norm = {n: v for n, w, v in _fields(val)}
    if not pieces:
        raise ValueError("no pieces")
    return {"pieces": pieces, "trainer": trainer, "normalizer": norm}


# ---------------------------------------------------------------------------------------------- the tokenizers build
def _normalizer(norm: dict, path: str):
    steps = []
    name = norm.get(1, b"").decode("utf-8", "replace")
    charsmap = norm.get(2, b"")
    if charsmap:  # nmt_nfkc and friends: the compiled map is what SentencePiece applies
        steps.append(normalizers.Precompiled(charsmap))
    elif name not in ("", "identity"):
        raise ValueError(f"{path}: normalizer {name!r} has no precompiled map to apply")
    if norm.get(4, 1):  # remove_extra_whitespaces: strip, and collapse runs of spaces
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.get(3, 1):  # add_dummy_prefix
        steps.append(normalizers.Prepend(SPACE))
    if not norm.get(5, 1):
        raise ValueError(f"{path}: escape_whitespaces=false is not supported (every trained model has it true)")
    steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps)


def tokenizer_from_spm(path: str) -> HFTokenizer:
    """Read `path` (a SentencePiece BPE tokenizer.model) into a tokenizers.Tokenizer with the same ids."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        proto = read_model_proto(data)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
    trainer = proto["trainer"]
    model_type = trainer.get(3, 1)
    if model_type != BPE:
        kind = {1: "UNIGRAM", 3: "WORD", 4: "CHAR"}.get(model_type, str(model_type))
        raise ValueError(f"{path}: a SentencePiece {kind} model; only BPE models (LLaMA's kind) are read")
    if trainer.get(24, 0):
        raise ValueError(f"{path}: treat_whitespace_as_suffix=true is not supported")
    pieces = proto["pieces"]
    vocab, scores = {}, {}
    for i, (piece, score, kind) in enumerate(pieces):
        if kind in (USER_DEFINED, UNUSED):
            raise ValueError(f"{path}: piece {i} {piece!r} is {'USER_DEFINED' if kind == USER_DEFINED else 'UNUSED'}; "
                             "only NORMAL, BYTE and special pieces are supported")
        if piece in vocab:
            raise ValueError(f"{path}: piece {piece!r} appears twice (ids {vocab[piece]} and {i})")
        vocab[piece] = i
        if kind == NORMAL:
            scores[piece] = score
    unk = [p for p, _, k in pieces if k == UNKNOWN]
    if len(unk) != 1:
        raise ValueError(f"{path}: {len(unk)} UNKNOWN pieces, expected one (<unk>)")
    # every way to build a NORMAL piece from two pieces is a merge, ranked by the built piece's score (best first);
    # ties between two splits of the same piece cannot change the result (both give that piece)
    merges = []
    for piece, score in scores.items():
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                merges.append((-score, vocab[piece], cut, a, b))
    merges.sort()
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk[0],
                                byte_fallback=bool(trainer.get(35, 0)), fuse_unk=True))
    tk.normalizer = _normalizer(proto["normalizer"], path)
    tk.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()] +
                                   ([decoders.Strip(" ", 1, 0)] if proto["normalizer"].get(3, 1) else []))
    tk.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _, k in pieces
                           if k in (UNKNOWN, CONTROL)])
    bos = [p for p, _, k in pieces if k == CONTROL and p == "<s>"]
    if bos:  # transformers' LlamaTokenizer: BOS in front (the project adds it itself; this is for other readers)
        tk.post_processor = processors.TemplateProcessing(single=f"{bos[0]}:0 $A:0",
                                                          pair=f"{bos[0]}:0 $A:0 {bos[0]}:1 $B:1",
                                                          special_tokens=[(bos[0], vocab[bos[0]])])
    return tk
