"""povid's hand-written LLaVA-1.5: CLIP vision (+ text) tower, projector, LLaMA decoder, checkpoints, tokenizer,
image preprocessing, generation, LoRA and the fused sequence-log-prob kernel. Imports nothing of the project.

    from model import Llava, CLIPModel, Tokenizer, load_image
    m = Llava.from_pretrained("llava-1.5-7b-hf", dtype=torch.bfloat16)

The names below are imported when first used (PEP 562), so that `import model.files` - the file helpers every
layer uses - does not pull in torch: a scoring command that needs no network starts in a fraction of a second.
"""
import importlib

_HOME = {"CLIPModel": "clip", "CLIPConfig": "config", "CLIPTextConfig": "config", "LlavaConfig": "config",
         "TextConfig": "config", "VisionConfig": "config", "load_image": "image", "Llava": "llava",
         "Tokenizer": "tokenizer"}
__all__ = list(_HOME)


def __getattr__(name):
    if name not in _HOME:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
