"""toy/pretrain_vision.py: the tower learns to tag, only the tower changes, the checkpoint reloads for SFT; bad input
is named."""
import json

import pytest
import torch

from toy import pretrain_vision
from toy import world as toyworld
from model import Llava, LlavaConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("pv") / "w"
    toyworld.build_world(str(w), n_train=64, n_test=4, seed=3, n_val=32)
    return w


def test_tower_learns_and_only_the_tower_changes(world, tmp_path):
    out = tmp_path / "vision"
    args = [f"--annotations={world}/annotations.json", f"--splits={world}/splits.json", "--eval_split=val",
            f"--model_config={world}/llava_config", f"--out_dir={out}", "--steps=60", "--batch_size=16",
            "--log_every=1000"]
    losses = pretrain_vision.main(args)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.2  # it learns to tag
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["mean_auc"] <= 1 and set(metrics["auc"]) == set(toyworld.categories())
    assert (out / "tokenizer.json").exists()

    trained = Llava.from_pretrained(str(out))
    torch.manual_seed(0)  # the script's seed: the same init, before any training
    init = Llava(LlavaConfig.from_dir(f"{world}/llava_config"))
    t, i = trained.state_dict(), init.state_dict()
    used = trained.config.vision_layers_used
    changed = {k for k in t if not torch.equal(t[k], i[k])}
    assert changed and all(k.startswith("vision_tower.") for k in changed)  # projector and decoder: the seeded init
    assert not any(k.startswith((f"vision_tower.layers.{used}.", "vision_tower.post_layernorm")) for k in changed)
    assert "vision_tower.patch_embedding.weight" in changed


def test_missing_image_entry_is_named(world, tmp_path):
    ann = json.loads((world / "annotations.json").read_text())
    bad_id = json.loads((world / "splits.json").read_text())["train"][5]
    del ann[bad_id]["objects"]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(SystemExit, match=bad_id):
        pretrain_vision.main([f"--annotations={tmp_path}/ann.json", f"--splits={world}/splits.json",
                              f"--model_config={world}/llava_config", f"--out_dir={tmp_path}/v", "--steps=1"])


def test_unknown_split_and_key():
    with pytest.raises(SystemExit, match="unknown config key"):
        pretrain_vision.parse_args(["--stepz=3"])
    with pytest.raises(SystemExit, match="--annotations is required"):
        pretrain_vision.parse_args(["--steps=3"])
