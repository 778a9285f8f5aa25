"""The rehearsal of the real job at real shapes, on CPU: the real tokenizers rebuilt offline (assets.py) and random
checkpoints shaped exactly like llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336, cut in depth
(checkpoints.py). Sits above model/ (uses it, never the other way round).

    python -m rehearsal.assets --out .venv/assets
    python -m rehearsal.checkpoints --out out/rehearsal [--narrow]
"""
