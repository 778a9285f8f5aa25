"""Convert an original LLaVA-1.5 checkpoint (liuhaotian/llava-v1.5-7b layout, + its separate openai CLIP tower) into
the llava-hf layout with every side file transformers' AutoProcessor and vLLM read. A one-off, offline step
(layout_style.md H12): the loader keeps reading both layouts, this writes the one the ecosystem loads.

    python -m model.convert --src llava-v1.5-7b --vision-tower clip-vit-large-patch14-336 \\
        --tokenizer llava-1.5-7b-hf --out llava-v1.5-7b-converted [--dtype float16] [--pad-vocab 32064]

  --src           liuhaotian dir: config.json (model_type llava_llama, mm_*), model.safetensors / pytorch_model*.bin
                  (pickles only through torch.load(weights_only=True)), its shards' index
  --vision-tower  openai CLIP dir (vision_model.* keys; the text tower, projections and position_ids are ignored)
  --tokenizer     a dir with tokenizer.json, needed when --src has none: liuhaotian ships only tokenizer.model (slow
                  SentencePiece; povid reads it, model/spm.py, but a llava-hf export needs the hub's
                  tokenizer.json with <image> and <pad>). A llava-hf tokenizer dir is the right one (same 32000-piece
                  vocabulary + <image> 32000 / <pad> 32001; `python -m rehearsal.assets` builds it offline).
  --dtype         default: the source's own (its config's torch_dtype; float16 for LLaVA-1.5)
  --pad-vocab N   append rows to embed_tokens / lm_head up to N (llava-hf has 32064). Without it the converted model
                  keeps its 32000-row head, image_token_index 32000 (= vocab size, as model/config.py reads liuhaotian
                  configs) and pads with <unk> 0 like the original. transformers 5 embeds input_ids before splicing
                  the image in, so it needs the image id inside the table: pass --pad-vocab 32064 for transformers /
                  vLLM. New embedding rows are the mean embedding, new lm_head rows the mean head row: a new token's
                  logit is then the mean logit, never above the largest, so greedy outputs do not change.

Writes: config.json (llava-hf, full sub-configs, image_aspect_ratio "pad"), model*.safetensors (+ index), the
tokenizer files of --tokenizer (pad renamed to <unk> when <pad> lies past the head), preprocessor_config.json
(LlavaImageProcessor with do_pad: LLaVA-1.5 was trained on padded images), processor_config.json, chat_template.json
(vicuna_v1, LLaVA-1.5's training template), generation_config.json. Test: tests/test_model_checkpoints.py.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .checkpoint import DTYPES, _read_json, stored_dtype
from .files import read_json, write_json
from .hf_files import TOKENIZER_FILES, write_hf_files
from .llava import Llava
from .tokenizer import Tokenizer

NO_TOKENIZER = ("{src} has no tokenizer.json (liuhaotian checkpoints ship only tokenizer.model, the slow SentencePiece "
                "file; the llava-hf layout needs llava-hf's tokenizer.json). Pass --tokenizer DIR with a llava-hf "
                "tokenizer: a local copy of llava-hf/llava-1.5-7b-hf's tokenizer files, or the one "
                "`python -m rehearsal.assets` builds offline "
                "into .venv/assets/llama (the same 32000-piece vocabulary, plus <image> 32000 and <pad> 32001).")


@torch.no_grad()
def pad_vocab(model: Llava, rows: int) -> None:
    """Grow embed_tokens and lm_head to `rows` rows: new rows are the means of the old ones (see the docstring)."""
    c = model.config.text
    if rows < c.vocab_size:
        raise ValueError(f"--pad-vocab {rows} is smaller than the model's {c.vocab_size} rows")
    for owner, name in ((model.language_model, "embed_tokens"), (model, "lm_head")):
        old = getattr(owner, name).weight  # (V, D)
        new = torch.cat([old, old.float().mean(0, keepdim=True).to(old.dtype).expand(rows - old.shape[0], -1)])
        mod = torch.nn.Embedding(rows, c.hidden_size) if name == "embed_tokens" else \
            torch.nn.Linear(c.hidden_size, rows, bias=False)
        mod.weight = torch.nn.Parameter(new.contiguous(), requires_grad=False)
        setattr(owner, name, mod)
    c.vocab_size = rows


def convert(src, vision_tower, out, tokenizer=None, dtype=None, pad_to=None, max_shard_bytes=5 * 1024 ** 3) -> dict:
    """Write the llava-hf layout of liuhaotian checkpoint `src` into `out`; returns {file: origin}."""
    src, vision_tower = os.fspath(src), os.fspath(vision_tower)
    if "text_config" in _read_json(src):
        raise ValueError(f"{src} is already in the llava-hf layout (its config.json has text_config)")
    tok_dir = os.fspath(tokenizer) if tokenizer else src
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        raise FileNotFoundError(NO_TOKENIZER.format(src=tok_dir) if tokenizer is None else
                                f"--tokenizer {tok_dir}: no tokenizer.json there")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else (dtype or stored_dtype(src) or torch.float16)
    model = Llava.from_pretrained(src, dtype=dtype, vision_tower=vision_tower)
    if pad_to:
        pad_vocab(model, pad_to)
    cfg, rows = model.config, model.config.text.vocab_size
    tok = Tokenizer.from_pretrained(tok_dir)
    if tok.image_token_id != cfg.image_token_id:
        raise ValueError(f"{tok_dir}: the tokenizer's image token is id {tok.image_token_id}, the model's "
                         f"{cfg.image_token_id}; use a llava-hf tokenizer (<image> = 32000)")
    pad = tok.pad_id if tok.pad_id < rows else tok.unk_id  # the original LLaVA pads with <unk> (0)
    if pad is None or pad >= rows:
        raise ValueError(f"{tok_dir}: no pad or unk id below the model's {rows} rows")
    cfg.pad_token_id = pad
    model.save_pretrained(out, max_shard_bytes=max_shard_bytes)
    done = write_hf_files(out, cfg, tok, template="vicuna_v1", tokenizer_dir=tok_dir, pad_id=pad)
    if pad != tok.pad_id:  # the copied tokenizer files name <pad> (past the head): name the id that exists
        name = tok.id_to_token(pad)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(out, f)
            if os.path.isfile(path):
                side = read_json(path)
                side["pad_token"] = name
                write_json(path, side)
                done[f] += f", pad_token -> {name!r}"
    for name in TOKENIZER_FILES:  # a stale file from an earlier conversion into `out` would contradict the new ones
        if name not in done and os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(description="liuhaotian LLaVA-1.5 (+ openai CLIP dir) -> llava-hf layout")
    ap.add_argument("--src", required=True, help="liuhaotian checkpoint dir")
    ap.add_argument("--vision-tower", required=True, help="openai CLIP dir (e.g. clip-vit-large-patch14-336)")
    ap.add_argument("--out", required=True, help="output dir (llava-hf layout)")
    ap.add_argument("--tokenizer", help="dir with tokenizer.json (default: --src)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="default: the source's own")
    ap.add_argument("--pad-vocab", type=int, help="grow the 32000-row head to N rows (llava-hf: 32064)")
    a = ap.parse_args(argv)
    try:
        done = convert(a.src, a.vision_tower, a.out, tokenizer=a.tokenizer, dtype=a.dtype, pad_to=a.pad_vocab)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"model.convert: {e}")
    for name, origin in sorted(done.items()):
        print(f"  {name}: {origin}")
    print(f"converted {a.src} (+ {a.vision_tower}) -> {a.out}")


if __name__ == "__main__":
    main()
