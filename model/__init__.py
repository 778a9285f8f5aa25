"""povid's hand-written LLaVA-1.5: CLIP vision (+ text) tower, projector, LLaMA decoder, checkpoints, tokenizer,
image preprocessing, generation, LoRA and the fused sequence-log-prob kernel. Imports nothing of the project."""
from .clip import CLIPModel
from .config import CLIPConfig, CLIPTextConfig, LlavaConfig, TextConfig, VisionConfig
from .llava import Llava
