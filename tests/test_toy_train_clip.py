"""toy/train_clip.py: contrastive training with hard negatives runs, learns, and saves a CLIP that reloads."""
import json

import torch

from toy import world as toyworld
from toy import train_clip
from model import CLIPModel


def test_train_clip_learns_and_reloads(tmp_path, capsys):
    toyworld.build_world(str(tmp_path / "w"), n_train=48, n_test=4, seed=1)
    anns = json.loads((tmp_path / "w/annotations.json").read_text())
    with open(tmp_path / "neg.jsonl", "w") as f:  # hard negatives: the caption plus an object
        for iid, a in list(anns.items())[:20]:
            f.write(json.dumps({"image": "w/" + a["image"], "prompt": "<image>\nDescribe this image.",
                                "rejected": a["caption"] + " a dog ."}) + "\n")
            # a QA turn's pair (hallucinate.py rules --all-turns): its wrong answer is no caption
            f.write(json.dumps({"image": "w/" + a["image"], "prompt": "Is there a dog in the image?",
                                "rejected": "Yes."}) + "\n")
            # an omission (an object left out) is still a true caption: no negative either
            f.write(json.dumps({"image": "w/" + a["image"], "prompt": "<image>\nDescribe this image.",
                                "rejected": "a table scene .", "category": "omission"}) + "\n")
    torch.manual_seed(0)
    losses = train_clip.main([f"--data={tmp_path}/w/train.json", f"--clip_config={tmp_path}/w/clip_config",
                              f"--out_dir={tmp_path}/clip", f"--negatives={tmp_path}/neg.jsonl", "--steps=30",
                              "--batch_size=16", "--warmup=5", "--log_every=100"])
    assert "20 hard negatives for 20 images (20 non-caption pairs and 20 omissions skipped)" in capsys.readouterr().out
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3  # it learns
    clip = CLIPModel.from_pretrained(str(tmp_path / "clip"))
    assert (tmp_path / "clip/tokenizer.json").exists()
    assert clip.logit_scale.item() != 0


def test_negative_without_a_prompt_is_named(tmp_path):
    import pytest
    toyworld.build_world(str(tmp_path / "w"), n_train=8, n_test=2, seed=1)
    (tmp_path / "neg.jsonl").write_text(json.dumps({"image": "w/images/train_000000.png", "rejected": "a dog ."}))
    with pytest.raises(ValueError, match=r"neg.jsonl:1: a pair needs string 'image', 'prompt' and 'rejected'"):
        train_clip.main([f"--data={tmp_path}/w/train.json", f"--clip_config={tmp_path}/w/clip_config",
                         f"--out_dir={tmp_path}/clip", f"--negatives={tmp_path}/neg.jsonl", "--steps=1"])


def test_unknown_key_is_an_error():
    import pytest
    with pytest.raises(SystemExit, match="unknown config key"):
        train_clip.parse_args(["--stepz=3"])
