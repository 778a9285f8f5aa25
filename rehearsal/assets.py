"""The real tokenizers, rebuilt offline from registry packages: LLaMA-1/2's 32000-token SentencePiece BPE (Vicuna,
LLaVA-1.5) and openai CLIP's 49408-token byte-level BPE, each written as the `tokenizer.json` + side files the hub
repos ship (llava-hf/llava-1.5-7b-hf, openai/clip-vit-large-patch14-336). No hub download anywhere.

    python -m rehearsal.assets --out .venv/assets     # -> OUT/llama/, OUT/clip/ (cached: a second run is a no-op)
    make .venv/assets/.built                           # the same, as `make test` runs it on a fresh clone

Sources (pinned by version and sha256; fetched only when this module runs, never when model/ is imported):
  llama   npm `llama-tokenizer-js` 1.2.2: llama-tokenizer.js bakes in the vocabulary (base64 of the 32000 pieces, one
          a line, id = line number) and the BPE merges in rank order (base64 of little-endian uint16 id pairs), both
          taken from LLaMA's own tokenizer.json (its data-conversion.py says so). Fetched with `npm pack`.
  clip    PyPI `open_clip_torch` 3.3.0 wheel: open_clip/bpe_simple_vocab_16e6.txt.gz, openai CLIP's merges file.
          Fetched with `pip download --no-deps` (never installed: it would pull torchvision and another torch).

What is built (layout_style.md A6 for LLaMA):
  llama/  tokenizer.json in the non-legacy layout llava-hf's current file uses: no normalizer, Metaspace pre-tokenizer
          ("▁", prepend_scheme "first", split false), BPE with byte_fallback and fuse_unk, <unk> <s> </s> = 0 1 2,
          decoder Replace ▁ -> " ", ByteFallback, Fuse, Strip one leading space; post-processor <s> $A; llava-hf's
          added <image> = 32000 and <pad> = 32001. Side files tokenizer_config.json, special_tokens_map.json,
          added_tokens.json as llava-hf ships them. No tokenizer.model: the SentencePiece proto is not in the package
          (nothing here reads it; transformers and vLLM load tokenizer.json).
  clip/   tokenizer.json as transformers' CLIP converter writes it: NFC, whitespace runs -> " ", lowercase; split by
          CLIP's regex; byte-level alphabet; BPE with the "</w>" end-of-word suffix; <|startoftext|> 49406 and
          <|endoftext|> 49407 around every text (RobertaProcessing); <|endoftext|> also unk and pad. Plus vocab.json
          and merges.txt (the slow tokenizer's files) and openai's tokenizer_config.json / special_tokens_map.json.
          openai's own tokenizer also runs ftfy.fix_text and html.unescape first; no tokenizer.json can, so text
          with mojibake or HTML entities tokenizes as in transformers, not as in openai's repo.

Tests: tests/test_rehearsal_assets.py (known LLaMA ids such as "Hello world!" -> 1 15043 3186 29991; CLIP against
transformers' CLIPTokenizer from vocab.json + merges.txt and against openai's BPE algorithm written out in the test).
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, ".venv", "assets")

LLAMA_PKG = ("llama-tokenizer-js", "1.2.2", "ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72")
CLIP_PKG = ("open_clip_torch", "3.3.0", "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce")
BUILD_VERSION = 1  # bump when what is built changes: cached outputs with another stamp are rebuilt

LLAMA_VOCAB, LLAVA_IMAGE, LLAVA_PAD = 32000, "<image>", "<pad>"
CLIP_BOS, CLIP_EOS, CLIP_VOCAB = "<|startoftext|>", "<|endoftext|>", 49408
# CLIP's pre-tokenizer regex (openai simple_tokenizer.py, with transformers' special tokens in front)
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# ---------------------------------------------------------------------------------------------- fetching
def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: str, want: str) -> str:
    got = sha256(path)
    if got != want:
        os.replace(path, path + ".bad")  # keep it for inspection, never use it
        raise RuntimeError(f"{path}: sha256 {got}, expected {want} (pinned in rehearsal/assets.py); moved aside "
                           f"to {path}.bad")
    return path


def _run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}); the package registries must be "
                           f"reachable the first time:\n{p.stderr.strip()[-2000:]}")


def fetch_llama_js(cache: str) -> str:
    """npm pack llama-tokenizer-js@1.2.2 into `cache` (once); returns the verified .tgz."""
    name, version, digest = LLAMA_PKG
    path = os.path.join(cache, f"{name}-{version}.tgz")
    if not os.path.isfile(path):
        if shutil.which("npm") is None:
            raise RuntimeError(f"npm not found: it fetches {name}@{version} (apt-get install npm)")
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # a half-written file never lands under its name
            _run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=tmp)
            os.replace(os.path.join(tmp, os.path.basename(path)), path)
    return _verified(path, digest)


def fetch_open_clip_wheel(cache: str) -> str:
    """pip download --no-deps open_clip_torch==3.3.0 into `cache` (once); returns the verified wheel."""
    name, version, digest = CLIP_PKG
    path = os.path.join(cache, f"{name}-{version}-py3-none-any.whl")
    if not os.path.isfile(path):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                  f"{name}=={version}", "-d", "."], cwd=tmp)
            os.replace(os.path.join(tmp, os.path.basename(path)), path)
    return _verified(path, digest)


# ---------------------------------------------------------------------------------------------- LLaMA
def llama_vocab_and_merges(tgz: str):
    """(pieces, merges) from llama-tokenizer.js: pieces[id] = token text, merges = [(left, right)] in rank order."""
    with tarfile.open(tgz) as tar:
        js = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")

    def blob(var):
        m = re.search(r'const %s = "([A-Za-z0-9+/=]*)"' % var, js)
        if m is None:
            raise ValueError(f"{tgz}: no {var} in package/llama-tokenizer.js")
        return base64.b64decode(m.group(1))

    pieces = blob("llama_vocab_base64").decode("utf-8").split("\n")
    raw = blob("llama_merges_binary")
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)  # uint16 little-endian, two per merge
    merges = [(pieces[a], pieces[b]) for a, b in zip(ids[0::2], ids[1::2])]
    if len(pieces) != LLAMA_VOCAB or pieces[:3] != ["<unk>", "<s>", "</s>"] or pieces[3 + 0x0A] != "<0x0A>":
        raise ValueError(f"{tgz}: unexpected vocabulary ({len(pieces)} pieces, first {pieces[:4]})")
    return pieces, merges


def build_llama_tokenizer(pieces, merges) -> Tokenizer:
    vocab = {p: i for i, p in enumerate(pieces)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tk.normalizer = None  # non-legacy: the dummy prefix comes from Metaspace, once, at the start of the input
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    special = [AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")]
    tk.add_special_tokens(special)  # already in the vocabulary: they keep ids 0 1 2
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (LLAVA_IMAGE, LLAVA_PAD)])
    tk.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                      special_tokens=[("<s>", 1)])
    got = [tk.token_to_id(t) for t in ("<unk>", "<s>", "</s>", LLAVA_IMAGE, LLAVA_PAD)]
    assert got == [0, 1, 2, 32000, 32001], got
    return tk


def _added(content, normalized=False):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False,
            "special": True}


def llama_side_files() -> dict:
    """tokenizer_config.json, special_tokens_map.json, added_tokens.json as llava-hf/llava-1.5-7b-hf ships them."""
    decoder = {str(i): _added(t) for i, t in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (32000, LLAVA_IMAGE),
                                             (32001, LLAVA_PAD))}
    config = {"add_bos_token": True, "add_eos_token": False, "add_prefix_space": None,
              "added_tokens_decoder": decoder, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
              "eos_token": "</s>", "extra_special_tokens": {"image_token": LLAVA_IMAGE}, "legacy": False,
              "model_max_length": 1000000000000000019884624838656, "pad_token": LLAVA_PAD, "padding_side": "left",
              "processor_class": "LlavaProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
              "trust_remote_code": False, "unk_token": "<unk>", "use_default_system_prompt": False}
    tok_map = {k: {kk: v for kk, v in _added(t).items() if kk != "special"}
               for k, t in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    tok_map.update(pad_token=_added(LLAVA_PAD), image_token=LLAVA_IMAGE)
    tok_map["pad_token"].pop("special")
    return {"tokenizer_config.json": config, "special_tokens_map.json": tok_map,
            "added_tokens.json": {LLAVA_IMAGE: 32000, LLAVA_PAD: 32001}}


# ---------------------------------------------------------------------------------------------- CLIP
def bytes_to_unicode() -> dict:
    """openai's reversible byte -> printable character table (GPT-2's): the 188 printable Latin-1 bytes map to
    themselves, the other 68 to chr(256), chr(257), ... in byte order. Its insertion order (printable ones first) is
    the order of CLIP's first 256 ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def clip_vocab_and_merges(wheel: str):
    """(vocab list, merges) of openai CLIP from the wheel's bpe_simple_vocab_16e6.txt.gz: ids 0-255 the byte
    alphabet, 256-511 the same + "</w>", then one id per merge (the first 48894 merges), then bos, eos."""
    member = "open_clip/bpe_simple_vocab_16e6.txt.gz"
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise ValueError(f"{wheel}: no {member}")
        lines = gzip.open(io.BytesIO(z.read(member))).read().decode("utf-8").split("\n")
    n_merges = CLIP_VOCAB - 2 * 256 - 2
    merges = [tuple(line.split()) for line in lines[1:1 + n_merges]]  # line 0 is the "#version" header
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{wheel}: malformed merge line in {member}")
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    if len(vocab) != CLIP_VOCAB or len(set(vocab)) != CLIP_VOCAB:
        raise ValueError(f"{wheel}: {len(vocab)} ids ({len(set(vocab))} distinct), expected {CLIP_VOCAB}")
    return vocab, merges


def build_clip_tokenizer(vocab, merges) -> Tokenizer:
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, unk_token=CLIP_EOS,
                              continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False))
    tk.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                          normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),  # keep the matches only
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # bytes -> the alphabet, no 2nd split
    tk.decoder = decoders.ByteLevel()  # "</w>" stays in the text: transformers' CLIPTokenizer replaces it by " "
    tk.add_special_tokens([AddedToken(CLIP_BOS, special=True, normalized=True),
                           AddedToken(CLIP_EOS, special=True, normalized=False)])
    tk.post_processor = processors.RobertaProcessing((CLIP_EOS, CLIP_VOCAB - 1), (CLIP_BOS, CLIP_VOCAB - 2),  # sep, cls
                                                     trim_offsets=False, add_prefix_space=False)
    assert (tk.token_to_id(CLIP_BOS), tk.token_to_id(CLIP_EOS)) == (49406, 49407)
    return tk


def clip_side_files(vocab, merges) -> dict:
    """vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json as openai's CLIP repos ship them."""
    def tok(t):
        return {"content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
    config = {"unk_token": dict(tok(CLIP_EOS), __type="AddedToken"),
              "bos_token": dict(tok(CLIP_BOS), __type="AddedToken"),
              "eos_token": dict(tok(CLIP_EOS), __type="AddedToken"), "pad_token": CLIP_EOS,
              "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
              "name_or_path": "openai/clip-vit-large-patch14-336", "model_max_length": 77,
              "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer"}
    tok_map = {"bos_token": tok(CLIP_BOS), "eos_token": tok(CLIP_EOS), "unk_token": tok(CLIP_EOS),
               "pad_token": CLIP_EOS}
    return {"vocab.json": {t: i for i, t in enumerate(vocab)},
            "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
            "tokenizer_config.json": config, "special_tokens_map.json": tok_map}


# ---------------------------------------------------------------------------------------------- writing
def _write_dir(final: str, tk: Tokenizer, files: dict, stamp: str):
    """Everything into final.tmp/, then one rename: a crashed build never looks finished."""
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tk.save(os.path.join(tmp, "tokenizer.json"))
    for name, content in files.items():
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    with open(os.path.join(tmp, ".built"), "w") as f:
        f.write(stamp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _stamp(pkg) -> str:
    return f"{pkg[0]}=={pkg[1]} sha256:{pkg[2]} build:{BUILD_VERSION}\n"


def _is_built(d: str, pkg) -> bool:
    f = os.path.join(d, ".built")
    return os.path.isfile(f) and open(f).read() == _stamp(pkg)


def llama_tokenizer_dir(out: str = DEFAULT_OUT) -> str:
    """OUT/llama: the LLaMA / llava-hf tokenizer files, built on first use (needs npm and the registry then)."""
    d = os.path.join(os.path.abspath(out), "llama")
    if not _is_built(d, LLAMA_PKG):
        pieces, merges = llama_vocab_and_merges(fetch_llama_js(os.path.join(os.path.dirname(d), "download")))
        _write_dir(d, build_llama_tokenizer(pieces, merges), llama_side_files(), _stamp(LLAMA_PKG))
    return d


def clip_tokenizer_dir(out: str = DEFAULT_OUT) -> str:
    """OUT/clip: openai CLIP's tokenizer files, built on first use (needs pip and the registry then)."""
    d = os.path.join(os.path.abspath(out), "clip")
    if not _is_built(d, CLIP_PKG):
        vocab, merges = clip_vocab_and_merges(fetch_open_clip_wheel(os.path.join(os.path.dirname(d), "download")))
        _write_dir(d, build_clip_tokenizer(vocab, merges), clip_side_files(vocab, merges), _stamp(CLIP_PKG))
    return d


def build_all(out: str = DEFAULT_OUT) -> dict:
    return {"llama": llama_tokenizer_dir(out), "clip": clip_tokenizer_dir(out)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="cache + output dir (default .venv/assets)")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        paths = build_all(a.out)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"rehearsal.assets: {e}")
    for name, d in paths.items():
        print(f"{name}: {d}")
    print(f"assets ready in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
