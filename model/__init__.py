"""povid's hand-written LLaVA-1.5: CLIP vision (+ text) tower, projector, LLaMA decoder, checkpoints, tokenizer,
image preprocessing, generation, LoRA and the fused sequence-log-prob kernel. Imports nothing of the project.

    from model import Llava, CLIPModel, Tokenizer, load_image
    m = Llava.from_pretrained("llava-1.5-7b-hf", dtype=torch.bfloat16)
"""
from .clip import CLIPModel
from .config import CLIPConfig, CLIPTextConfig, LlavaConfig, TextConfig, VisionConfig
from .image import load_image
from .llava import Llava
from .tokenizer import Tokenizer
