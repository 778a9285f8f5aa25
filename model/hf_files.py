"""The Hugging Face side files of a llava-hf checkpoint directory: what transformers' AutoProcessor / AutoTokenizer /
GenerationConfig and vLLM read beside config.json and the weights. Without them a directory of weights loads as a
model but not as a processor, has no chat template, and generates with the wrong pad / stop ids.

  tokenizer.json tokenizer_config.json special_tokens_map.json added_tokens.json tokenizer.model   (the tokenizer)
  preprocessor_config.json   the image processor: CLIPImageProcessor (resize shortest edge, centre crop), or, when
                             the model was trained on padded images (config image_aspect_ratio "pad", LLaVA-1.5's
                             expand2square), transformers' LlavaImageProcessor with do_pad: it pads to a square with
                             int(255 * CLIP mean) = (122, 116, 104) before the same resize / crop (model/image.py)
  processor_config.json      LlavaProcessor: patch_size, vision_feature_select_strategy, num_additional_image_tokens
                             (CLIP's CLS: 1), image_token; it expands each <image> to (S/p)^2 + 1 - 1 = 576 tokens
  chat_template.json         the conversation template as Jinja (model/tokenizer.py's templates, rendered as text:
                             vicuna_v1 = LLaVA-1.5's system sentence + "USER: ... ASSISTANT: ...</s>", llava_hf = the
                             hub's file, no system sentence)
  generation_config.json     bos / eos / pad ids

`write_hf_files` copies the tokenizer files and the generation config from the source directories (the tokenizer's,
the base checkpoint's) when they have them, and writes the rest: the image processor, the processor and the chat
template describe how *this* model was trained (its image_aspect_ratio, its template), which need not be how the
base's files say (llava-hf's hub files centre-crop and have no system sentence; LLaVA-1.5 trained padded, with it). Token ids through a processor: it tokenizes the rendered prompt as one string, so
after "<image>" there is no dummy-prefix "▁" (non-legacy tokenizer.json); the original LLaVA (vicuna_v1 here) has one.
That one-token difference is llava-hf's own (layout_style.md A6 pitfall 1), not the export's.

A MobileVLM model (config.is_mobilevlm) gets MobileVLM's own side files instead (_mobilevlm_side_files): its
tokenizer files and generation config, no processor files, which its code does not read.

Tested in tests/test_export.py (AutoProcessor + LlavaForConditionalGeneration on an exported model give the same
greedy tokens as Llava.generate).
"""
from __future__ import annotations

import json
import os
import shutil

from .config import LlavaConfig
from .files import atomic_path, write_json
from .image import CLIP_MEAN, CLIP_STD
from .tokenizer import DEFAULT_TEMPLATE, VICUNA_SYSTEM, get_template

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model")
MODEL_SIDE_FILES = ("generation_config.json",)  # copied from the base; the processor files are written (above)

# llava-hf/llava-1.5-7b-hf chat_template.json (layout_style.md A1): roles upper-cased, images first, no system
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def _vicuna_chat_template(image_token: str) -> str:
    """conv_vicuna_v1 as Jinja: "{system} USER: <image>\\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT:". A leading
    system message replaces the default sentence; content may be a string or a list of image / text parts (the
    image tag goes first, as LLaVA's preprocess_multimodal puts it)."""
    return (
        "{%- set ns = namespace(system=" + json.dumps(VICUNA_SYSTEM) + ", start=0) -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set c = messages[0]['content'] -%}"
        "{%- set ns.system = c if c is string else (c | selectattr('type', 'equalto', 'text')"
        " | map(attribute='text') | join(' ')) -%}{%- set ns.start = 1 -%}{%- endif -%}"
        "{%- if ns.system -%}{{ ns.system + ' ' }}{%- endif -%}"
        "{%- for message in messages[ns.start:] -%}"
        "{%- set c = message['content'] -%}"
        "{%- if c is string -%}{%- set text = c -%}{%- set n_img = 0 -%}{%- else -%}"
        "{%- set text = c | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
        "{%- set n_img = c | selectattr('type', 'equalto', 'image') | list | length -%}{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ 'USER: ' }}{{ " + json.dumps(image_token + "\n") + " * n_img }}"
        "{{ (text | trim) if n_img else text }}{{ ' ' }}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{ 'ASSISTANT: ' }}{% generation %}{{ text }}{{ '</s>' }}{% endgeneration %}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}")


def chat_template(template: str = DEFAULT_TEMPLATE, image_token: str = "<image>") -> str:
    tpl = get_template(template)  # unknown names are an error here too
    if tpl.name == "vicuna_v1":
        return _vicuna_chat_template(image_token)
    return LLAVA_HF_CHAT_TEMPLATE.replace("<image>", image_token)


def preprocessor_config(config: LlavaConfig) -> dict:
    """transformers' image processor for this model: LlavaImageProcessor + do_pad for image_aspect_ratio "pad"
    (LLaVA-1.5's expand2square), else the plain CLIPImageProcessor the hub's llava-hf file names."""
    s = config.image_size
    d = {"crop_size": {"height": s, "width": s}, "do_center_crop": True, "do_convert_rgb": True,
         "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
         "image_std": list(CLIP_STD), "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
         "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": s}}  # resample 3 = PIL bicubic
    if config.image_aspect_ratio == "pad":
        d.update(image_processor_type="LlavaImageProcessor", do_pad=True)
    return d


def processor_config(config: LlavaConfig, image_token: str = "<image>") -> dict:
    # LlavaProcessor: (S / p)^2 patches + num_additional (CLS) - 1 if the strategy drops CLS = num_image_tokens
    return {"image_token": image_token, "num_additional_image_tokens": 1, "patch_size": config.vision.patch_size,
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": config.vision_feature_select_strategy}


def generation_config(bos_id, eos_id, pad_id) -> dict:
    return {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}


def _copy(src_dir: str, name: str, out: str) -> bool:
    src = os.path.join(src_dir, name)
    if not os.path.isfile(src) or os.path.abspath(src_dir) == os.path.abspath(out):
        return False
    with atomic_path(os.path.join(out, name)) as tmp:
        shutil.copyfile(src, tmp)
    return True


def write_hf_files(out: str, config: LlavaConfig, tok, template: str = DEFAULT_TEMPLATE, tokenizer_dir=None,
                   base_dir=None, pad_id=None) -> dict:
    """Copy the side files `tokenizer_dir` (tokenizer files) and `base_dir` (the others) have into `out`, then write
    the missing ones. `tok` is the model's model/tokenizer.Tokenizer; `pad_id` overrides its pad id in the written
    generation config. Returns {file name: "copied from DIR" | "written"}."""
    os.makedirs(out, exist_ok=True)
    if config.is_mobilevlm:
        return _mobilevlm_side_files(out, tok, tokenizer_dir, base_dir, pad_id)
    done = {}
    for name in TOKENIZER_FILES:
        if tokenizer_dir and _copy(tokenizer_dir, name, out):
            done[name] = f"copied from {tokenizer_dir}"
    if "tokenizer.json" not in done:  # no source file: what the training tokenizer holds, HF-loadable
        tok.save_pretrained(out)
        done.update({n: "written" for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")})
    elif "tokenizer_config.json" not in done:  # names the special tokens and the class transformers builds
        write_json(os.path.join(out, "tokenizer_config.json"), tok.hf_tokenizer_config())
        done["tokenizer_config.json"] = "written"
    for name in MODEL_SIDE_FILES:
        if base_dir and _copy(base_dir, name, out):
            done[name] = f"copied from {base_dir}"
    image_token = tok.special_names["image"] if tok.image_token_id is not None else "<image>"
    if "preprocessor_config.json" not in done:
        write_json(os.path.join(out, "preprocessor_config.json"), preprocessor_config(config))
        done["preprocessor_config.json"] = "written"
    if "processor_config.json" not in done:
        write_json(os.path.join(out, "processor_config.json"), processor_config(config, image_token))
        done["processor_config.json"] = "written"
    if "chat_template.json" not in done:
        write_json(os.path.join(out, "chat_template.json"), {"chat_template": chat_template(template, image_token)})
        done["chat_template.json"] = "written"
    if "generation_config.json" not in done:
        pad = tok.pad_id if pad_id is None else pad_id
        write_json(os.path.join(out, "generation_config.json"), generation_config(tok.bos_id, tok.eos_id, pad))
        done["generation_config.json"] = "written"
    return done


def _mobilevlm_side_files(out, tok, tokenizer_dir, base_dir, pad_id) -> dict:
    """MobileVLM's layout has no processor files: its code builds the image processor from config.json's
    mm_vision_tower name and the conversation template from its own conversation.py (`v1` = vicuna_v1). What it
    reads beside the weights is the slow tokenizer (tokenizer.model + tokenizer_config.json, loaded with
    use_fast=False) and generation_config.json: copied as they are; written only where there is no source."""
    done = {}
    for name in TOKENIZER_FILES:
        if tokenizer_dir and _copy(tokenizer_dir, name, out):
            done[name] = f"copied from {tokenizer_dir}"
    if "tokenizer.model" not in done and "tokenizer.json" not in done:  # e.g. a from-scratch tokenizer.json
        tok.save_pretrained(out)
        done.update({n: "written" for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")})
    if base_dir and _copy(base_dir, "generation_config.json", out):
        done["generation_config.json"] = f"copied from {base_dir}"
    else:
        pad = tok.pad_id if pad_id is None else pad_id
        write_json(os.path.join(out, "generation_config.json"), generation_config(tok.bos_id, tok.eos_id, pad))
        done["generation_config.json"] = "written"
    return done
