"""Paired bootstrap intervals (toy/bootstrap.py): the unresampled statistics equal CHAIR's and POPE's own numbers, a run
compared with itself has zero-width intervals, a real change lies inside its interval, and mismatched or malformed
run files are errors naming the file."""
import json
import random

import numpy as np
import pytest

from toy import bootstrap as bs
from evals.chair import Synonyms, chair_scores
from evals.pope import SPLITS, pope_metrics

SYN = Synonyms({"dog": ["puppy"], "cat": [], "fork": [], "cup": ["mug"]})
OBJS = ["dog", "cat", "fork", "cup"]


def write_run(d, captions, gt, answers):
    """A run directory as demo.py leaves it: chair.json (per_caption) and one POPE answers file per split."""
    d.mkdir(parents=True, exist_ok=True)
    scores = chair_scores(captions, gt, SYN)
    per_caption = scores.pop("per_caption")  # eval.py chair's layout
    (d / "chair.json").write_text(json.dumps({"kind": "chair", "metrics": scores, "per_caption": per_caption}))
    for split in SPLITS:
        with open(d / f"pope_{split}_answers.jsonl", "w") as f:
            for row in answers[split]:
                f.write(json.dumps(row) + "\n")
    return scores


def make_world(seed, n=60, hallucinate=0.5, say_yes=0.7):
    """n scenes with 1-3 objects; captions name each present object with P .8 and one absent one with P
    `hallucinate`; POPE asks one present and one absent object per scene and split, answered yes w.p. `say_yes`."""
    rng = random.Random(seed)
    gt, caps, answers = {}, {}, {s: [] for s in SPLITS}
    qid = 0
    for i in range(n):
        iid = f"s{i}"
        present = rng.sample(OBJS, rng.randint(1, 3))
        absent = [o for o in OBJS if o not in present]
        extra = rng.choice(absent) if absent else None  # drawn either way: worlds differing in `hallucinate`
        said = [o for o in present if rng.random() < .8] + ([extra] if extra and rng.random() < hallucinate else [])
        gt[iid], caps[iid] = present, "a photo with " + " and ".join(f"a {o}" for o in said) + " ."
        for split in SPLITS:
            for obj, label in ((rng.choice(present), "yes"), *([(rng.choice(absent), "no")] if absent else [])):
                qid += 1
                answers[split].append({"question_id": qid, "image_id": iid, "label": label,
                                       "text": "Yes." if rng.random() < say_yes else "No, there is not."})
    return caps, gt, answers


def test_unresampled_statistics_are_chair_and_pope(tmp_path):
    caps, gt, answers = make_world(0)
    scores = write_run(tmp_path / "run", caps, gt, answers)
    _, counts = bs.scene_counts(str(tmp_path / "run"))
    chair_i, chair_s, recall, f1 = bs._stats(counts)
    f1s = [pope_metrics([(a["question_id"], a["text"]) for a in answers[s]],
                        [(a["question_id"], a["label"]) for a in answers[s]])["f1"] for s in SPLITS]
    assert chair_i == pytest.approx(scores["chair_i"]) and chair_s == pytest.approx(scores["chair_s"])
    assert recall == pytest.approx(scores["recall"]) and f1 == pytest.approx(np.mean(f1s))
    assert 0 < scores["chair_i"] < 1 and 0 < np.mean(f1s) < 1  # the case is not degenerate


def test_a_run_against_itself_has_zero_width_intervals(tmp_path):
    caps, gt, answers = make_world(1)
    write_run(tmp_path / "a", caps, gt, answers)
    write_run(tmp_path / "b", caps, gt, answers)
    ci = bs.paired_intervals(str(tmp_path / "a"), str(tmp_path / "b"), n=300)
    assert ci == {k: (0.0, 0.0, 0.0) for k in bs.STATS}


def test_the_change_lies_inside_its_interval_and_the_draw_is_seeded(tmp_path):
    base = make_world(2, n=200, hallucinate=0.6, say_yes=0.7)
    caps, gt, _ = make_world(2, n=200, hallucinate=0.2)  # the same scenes (same draws), fewer absent named
    _, _, answers = make_world(3, n=200, say_yes=0.5)  # other POPE answers; its image ids are the same s0..s199
    sb = write_run(tmp_path / "base", *base)
    sr = write_run(tmp_path / "run", caps, gt, answers)
    assert gt == base[1]
    ci = bs.paired_intervals(str(tmp_path / "base"), str(tmp_path / "run"), n=1000, seed=0)
    change, low, high = ci["chair_i_rel"]
    assert change == pytest.approx(sr["chair_i"] / sb["chair_i"] - 1)  # the change on all the scenes, CHAIR's own
    assert ci["chair_s"][0] == pytest.approx(sr["chair_s"] - sb["chair_s"])
    assert low < change < high < 0  # fewer hallucinations: the whole interval below 0
    assert ci["recall"] == (0.0, 0.0, 0.0)  # the same present objects are named in both: no change in any draw
    for k in ("chair_i_rel", "chair_s", "pope_f1"):
        assert ci[k][1] < ci[k][0] < ci[k][2]
    assert bs.paired_intervals(str(tmp_path / "base"), str(tmp_path / "run"), n=1000, seed=0) == ci


def test_mismatched_scenes_and_bad_labels_name_the_file(tmp_path):
    caps, gt, answers = make_world(4)
    write_run(tmp_path / "base", caps, gt, answers)
    write_run(tmp_path / "fewer", {k: v for k, v in caps.items() if k != "s0"},
              {k: v for k, v in gt.items() if k != "s0"}, answers)
    with pytest.raises(ValueError, match="fewer/chair.json"):
        bs.paired_intervals(str(tmp_path / "base"), str(tmp_path / "fewer"))
    answers["popular"][3]["label"] = "maybe"
    write_run(tmp_path / "bad", caps, gt, answers)
    with pytest.raises(ValueError, match="pope_popular_answers.jsonl:4:"):
        bs.paired_intervals(str(tmp_path / "base"), str(tmp_path / "bad"))
