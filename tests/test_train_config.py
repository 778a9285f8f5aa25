"""train_config.py: --help lists every flag; every bad value, and every setting the run would ignore, is named alone
in one line before any work; the recipes hold the values their comments cite."""
import os
import re
from dataclasses import fields

import pytest

import train
from train_config import Config, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OK = ["--data=d", "--init_from=c"]


def test_help_lists_every_flag_with_its_default_and_meaning(capsys):
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as e:
            train.main([flag])  # what `python train.py --help` runs first
        assert e.value.code == 0
        out = capsys.readouterr().out
        for f in fields(Config):  # the flag, its default, then its meaning (on the next line for a long default)
            assert re.search(rf"^  --{f.name}={re.escape(str(f.default))}\s+\S", out, re.M), f.name


BAD = [  # each bad value alone, and each setting the run would silently ignore
    ("--max_steps=-1", "--max_steps must be >= 0 (0 = --max_epochs decides); got -1"),
    ("--max_epochs=0", "--max_epochs must be > 0; got 0.0"),
    ("--micro_batch_size=0", "--micro_batch_size must be >= 1; got 0"),
    ("--batch_size=-2", "--batch_size must be >= 0 (0 = micro_batch_size x ranks); got -2"),
    ("--log_every=0", "--log_every must be >= 1; got 0"),
    ("--save_every=-5", "--save_every must be >= 0 (0 = only at the end); got -5"),
    ("--warmup_steps=-1", "--warmup_steps must be >= 0; got -1"),
    ("--noise_schedule=cosin", "--noise_schedule must be one of 'sigmoid', 'linear', 'cosine'; got 'cosin'"),
    ("--mode=povid --loss_type=ipo", "--loss_type=ipo would have no effect: POVID's two terms are sigmoid DPO"),
    ("--mode=povid --label_smoothing=0.1", "--label_smoothing=0.1 would have no effect: POVID's two terms are"),
    ("--mode=sft --rpo_alpha=1", "--rpo_alpha=1.0 would have no effect: --mode=sft reads no preference setting"),
    ("--mode=dpo --noise_t=300", "--noise_t=300 would have no effect: it is POVID's (--mode=povid), not --mode=dpo's"),
    ("--mode=dpo --loss_type=hinge --label_smoothing=0.1", "--loss_type=hinge has no label smoothing"),
    ("--mode=dpo --lora_alpha=32", "--lora_alpha=32.0 would have no effect: a LoRA setting, and --lora_rank=0"),
    ("--mode=dpo --train_projector=True", "full fine-tuning (--lora_rank=0) trains the projector anyway"),
    ("--mode=dpo --ref_cache_dir=x", "--ref_cache_dir=x would have no effect: it needs --ref_cache=True"),
    ("--warmup_ratio=0.1 --warmup_steps=5", "--warmup_steps=5 would have no effect: --warmup_ratio sets the warmup"),
    ("--lora_rank=8 --projector_lr=2e-5", "--projector_lr is the projector's learning rate: it needs"),
    ("--mode=dpo --max_steps=3 --stop_after=4", "--stop_after=4 would never stop a run of --max_steps=3"),
    ("--resume=True --overwrite=True", "give one"),
    ("--lerning_rate=1", "unknown config key 'lerning_rate' (train.py --help lists them)"),
]


@pytest.mark.parametrize("flags,message", BAD)
def test_bad_values_and_ignored_settings_are_named_in_one_line(flags, message):
    with pytest.raises(SystemExit) as e:
        parse_config(OK + flags.split())
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_defaults_are_povids_and_every_setting_passes_alone():
    assert Config().noise_tokens_from == "each"  # POVID's code: the reference picks its own noise tokens
    assert parse_config(OK + ["--mode=povid", "--noise_t=300", "--lora_rank=8", "--lora_alpha=16"]).noise_t == 300


def test_recipes_parse_and_hold_povids_values():
    """Every recipe under recipes/ loads as train.py's config (paths from the command line), with the values its
    comments cite; a recipe key train.py does not know is an error naming the file and the key."""
    s1 = train.parse_config([f"{ROOT}/recipes/povid_stage1.toml", "--data=d", "--init_from=c"])
    s2 = train.parse_config([f"{ROOT}/recipes/povid_stage2.toml", "--data=d", "--init_from=c", "--max_steps=2"])
    cd = train.parse_config([f"{ROOT}/recipes/clip_dpo.toml", "--data=d", "--init_from=c"])
    for c in (s1, s2, cd):
        assert (c.lora_rank, c.lora_alpha, c.beta, c.batch_size, c.micro_batch_size) == (128, 256, 0.1, 0, 1)
        assert (c.template, c.image_aspect_ratio, c.warmup_ratio, c.min_lr_ratio) == ("vicuna_v1", "pad", 0.03, 0)
        assert (c.adam_beta2, c.train_projector) == (0.999, False)
    assert (s1.mode, s1.lr, s1.max_epochs, s2.mode, s2.max_epochs, s2.max_steps) == ("dpo", 1e-7, 3, "povid", 1, 2)
    assert (s2.noise_t, s2.noise_tokens_from, s2.povid_weight_injected, s2.povid_weight_noise) == \
        (500, "each", 0.5, 0.5)


def test_recipe_errors_name_the_file_and_key(tmp_path):
    (tmp_path / "r.toml").write_text("lora_rank = 8\nlerning_rate = 1e-5\n")
    with pytest.raises(SystemExit, match=r"r.toml: unknown config key 'lerning_rate'"):
        train.parse_config([str(tmp_path / "r.toml"), "--data=d", "--init_from=c"])
    (tmp_path / "t.toml").write_text('lora_rank = "eight"\n')
    with pytest.raises(SystemExit, match=r"t.toml: lora_rank='eight': expected int"):
        train.parse_config([str(tmp_path / "t.toml"), "--data=d", "--init_from=c"])


