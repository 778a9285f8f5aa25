"""CHAIR on hand-computed cases: repeats, synonyms, two-word phrases, plurals, the baby/adult and passenger rules,
the toilet-seat rule, a caption with no object word; the singulariser; synonym-file parsing; errors; the CLI; and
chair-gt on COCO's own files (instances + captions, the seeded sample, reuse of published ids, strict readers)."""
import json
import os
import random

import pytest

import eval as ev
from evals.chair import Synonyms, chair_scores, sample_image_ids, singularize
from evals.files import load_annotations
from rehearsal.public_data import VAL, VAL_GT, make_public_data

TABLE = """# toy table in the COCO synonyms.txt format
person, man, woman, people, child, boy, girl, baby, adult, passenger
dog, puppy
cat, kitten

elephant
hot dog
teddy bear
chair, seat, stool
toilet
knife
mouse
dining table, table
train
motorcycle, scooter,  motor bike
tie, bow tie
"""

# caption -> (ground truth, hand-counted mentions, hallucinated mentions, gt recalled, words)
CASES = {
    # repeats count ("dogs" twice), synonyms (man -> person, table -> dining table), plural
    "1": ("A man and two dogs sit at a table. The dogs look happy.", {"person", "dog"}, 4, 1, 2, 13),
    # "baby elephant" -> elephant (baby must not fire person), "hot dog" is not a dog, hyphenated phrase
    "2": ("A baby elephant next to a hot dog stand and a teddy-bear.", {"elephant", "teddy bear"}, 3, 1, 2, 13),
    # "toilet seat" -> toilet, and with a toilet in the caption the other "seat" is no chair
    "3": ("The toilet seat is up and the seat is clean.", {"toilet"}, 1, 0, 1, 10),
    # irregular plurals: children -> child -> person, knives -> knife, mice -> mouse (hallucinated)
    "4": ("Three children with knives and mice.", {"person", "knife"}, 3, 1, 2, 6),
    # no object word at all: not hallucinated, but still in the CHAIR_s denominator; its GT lowers recall
    "5": ("It is a sunny day.", {"cat"}, 0, 0, 0, 5),
    # passenger train -> train (passenger must not fire person), kitten -> cat, bow tie -> tie (hallucinated)
    "6": ("A passenger train and a kitten on a chair with a bow tie.", {"train", "cat", "chair"}, 4, 1, 3, 13),
}


@pytest.fixture()
def syn(tmp_path):
    p = tmp_path / "synonyms.txt"
    p.write_text(TABLE)
    return Synonyms.from_file(str(p))


def test_hand_computed_scores(syn):
    caps = {k: v[0] for k, v in CASES.items()}
    gt = {k: v[1] for k, v in CASES.items()}
    s = chair_scores(caps, gt, syn)
    assert s["n_captions"] == 6
    assert s["chair_s"] == pytest.approx(4 / 6)  # captions 1, 2, 4, 6
    assert s["n_mentions"] == 15 and s["n_hallucinated"] == 4
    assert s["chair_i"] == pytest.approx(4 / 15)  # pooled, not the mean of per-caption ratios
    assert s["recall"] == pytest.approx(10 / 11)
    assert s["length"] == pytest.approx(60 / 6)
    for k, (_, _, n_ment, n_hall, n_rec, n_words) in CASES.items():
        d = s["per_caption"][k]
        assert (len(d["mentioned"]), len(d["hallucinated"]), len(d["recalled"]), d["length"]) == \
               (n_ment, n_hall, n_rec, n_words), k
    d1 = s["per_caption"]["1"]
    assert d1["mentioned"] == ["person", "dog", "dining table", "dog"]
    assert d1["words"] == ["man", "dogs", "table", "dogs"] and d1["hallucinated"] == ["dining table"]
    assert s["per_caption"]["2"]["words"] == ["baby elephant", "hot dog", "teddy bear"]
    assert s["per_caption"]["2"]["hallucinated"] == ["hot dog"]
    assert s["per_caption"]["3"]["mentioned"] == ["toilet"]
    assert s["per_caption"]["4"]["mentioned"] == ["person", "knife", "mouse"]
    assert s["per_caption"]["6"]["mentioned"] == ["train", "cat", "chair", "tie"]
    assert s["per_caption"]["5"] == {"mentioned": [], "hallucinated": [], "words": [], "hallucinated_words": [],
                                     "gt": ["cat"], "recalled": [], "length": 5}


def test_rules_one_by_one(syn):
    def mentions(text):
        return [c for c, _ in syn.extract(text)[0]]

    assert mentions("A seat by the toilet.") == ["toilet"]  # toilet anywhere drops every seat
    assert mentions("A seat by the door.") == ["chair"]
    assert mentions("An adult dog and a baby.") == ["dog", "person"]  # "adult dog" -> dog; lone "baby" is a person
    assert mentions("Two passengers.") == ["person"]
    assert mentions("The motor bikes and a scooter.") == ["motorcycle", "motorcycle"]  # stripped " motor bike"
    assert mentions("It was hot. Dog days.") == ["dog"]  # no phrase across punctuation
    assert mentions("The dog's bowl and the dogs' toys; Puppies!") == ["dog", "dog", "dog"]
    assert mentions("people, persons, women, boys") == ["person"] * 4


@pytest.mark.parametrize("plural,singular", [
    ("people", "person"), ("children", "child"), ("mice", "mouse"), ("knives", "knife"), ("men", "man"),
    ("policemen", "policeman"), ("dogs", "dog"), ("horses", "horse"), ("benches", "bench"), ("boxes", "box"),
    ("glasses", "glass"), ("buses", "bus"), ("ponies", "pony"), ("cookies", "cookie"), ("ties", "tie"),
    ("shoes", "shoe"), ("potatoes", "potato"), ("leaves", "leaf"), ("gloves", "glove"), ("skis", "ski"),
    ("sheep", "sheep"), ("scissors", "scissors"), ("bus", "bus"), ("grass", "grass"), ("tennis", "tennis"),
    ("has", "has"), ("is", "is"), ("woman", "woman"), ("bananas", "banana"), ("toys", "toy")])
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_errors(syn, tmp_path):
    with pytest.raises(KeyError, match="caption '7' has no ground-truth"):
        chair_scores({"1": "a dog", "7": "a cat"}, {"1": {"dog"}}, syn)
    with pytest.raises(ValueError, match="object 'unicorn' is not in the synonym table"):
        chair_scores({"1": "a dog"}, {"1": {"unicorn"}}, syn)
    # int ids and string ids meet; ground truth given by synonym is canonicalised
    assert chair_scores({1: "two puppies"}, {"1": ["puppy"]}, syn)["chair_s"] == 0.0
    bad = tmp_path / "bad.txt"
    bad.write_text("dog, puppy\ncat, puppies\n")
    with pytest.raises(ValueError, match="bad.txt: 'puppies' .* both 'dog' and 'cat'"):
        Synonyms.from_file(str(bad))
    bad.write_text("dog\ncat\ndog, hound\n")
    with pytest.raises(ValueError, match="bad.txt:3: category 'dog' has a second line"):
        Synonyms.from_file(str(bad))


def test_cli_both_annotation_layouts(tmp_path, capsys):
    (tmp_path / "syn.txt").write_text(TABLE)
    answers = tmp_path / "run" / "answers.jsonl"
    answers.parent.mkdir()
    with open(answers, "w") as f:
        for k, v in CASES.items():
            f.write(json.dumps({"question_id": f"q{k}", "image_id": int(k), "prompt": "Describe.", "text": v[0]})
                    + "\n")
    as_dict = {k: {"objects": sorted(v[1]), "image": f"{k}.png"} for k, v in CASES.items()}
    as_list = [{"id": int(k), "objects": sorted(v[1])} for k, v in CASES.items()]
    for name, gt, syn_arg in (("d.json", as_dict, ["--synonyms", str(tmp_path / "syn.txt")]),
                              ("l.json", as_list, [])):  # default: synonyms.txt beside the annotations
        (tmp_path / name).write_text(json.dumps(gt))
        if not syn_arg:
            with pytest.raises(FileNotFoundError, match="no --synonyms given and no .*synonyms.txt"):
                ev.main(["chair", "--answers", str(answers), "--annotations", str(tmp_path / name)])
            (tmp_path / "synonyms.txt").write_text(TABLE)
        ev.main(["chair", "--answers", str(answers), "--annotations", str(tmp_path / name)] + syn_arg)
        out = json.loads((tmp_path / "run" / "chair.json").read_text())
        assert out["kind"] == "chair" and out["metrics"]["chair_i"] == pytest.approx(4 / 15)
        assert out["protocol"]["prompt"] == ["Describe."] and out["protocol"]["model"] == []
        assert out["per_caption"]["1"]["hallucinated"] == ["dining table"]
    assert "CHAIR_s 66.7  CHAIR_i 26.7  recall 90.9" in capsys.readouterr().out
    qfile = tmp_path / "q" / "chair_q.jsonl"
    ev.main(["chair-questions", "--annotations", str(tmp_path / "d.json"), "--output", str(qfile)])
    qs = [json.loads(line) for line in open(qfile)]
    assert qs[0] == {"question_id": "1", "image_id": "1", "prompt": "Describe this image.", "image": "../1.png"}
    assert len(qs) == 6
    with pytest.raises(ValueError, match="l.json: image '1' has no 'image' path"):
        ev.main(["chair-questions", "--annotations", str(tmp_path / "l.json"), "--output", str(qfile)])
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 1, "objects": ["dog"]}, {"objects": ["cat"]}]))
    with pytest.raises(ValueError, match="bad.json: item 1 has no 'id' or 'image_id'"):
        load_annotations(str(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"1": {"objects": "dog"}}))
    with pytest.raises(ValueError, match="bad.json: key '1': needs an 'objects' list"):
        load_annotations(str(tmp_path / "bad.json"))


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return make_public_data(tmp_path_factory.mktemp("public"), image_size=32)


def _chair_gt(pub, out, *extra, instances=None, captions=None):
    args = ["chair-gt", "--instances", instances or pub["coco_instances_val"], "--captions",
            captions or pub["coco_captions_val"], "--images-dir", pub["coco_val_images"], "--synonyms",
            pub["synonyms"], "--output", str(out)]
    ev.main(args + list(extra))


def test_chair_gt_from_coco(pub, tmp_path, capsys):
    out = tmp_path / "gt"
    _chair_gt(pub, out, "--num-images", "7", "--seed", "0")
    gt = json.loads((out / "chair_gt.json").read_text())
    assert {int(k): v["objects"] for k, v in gt.items()} == VAL_GT  # instances + the objects the captions name
    assert gt["139"]["from_instances"] == ["cat"] and gt["139"]["from_captions"] == ["cat", "couch"]
    assert gt["285"]["n_captions"] == 5 and gt["139"]["file_name"] == "COCO_val2014_000000000139.jpg"
    assert (out / "sample_ids.txt").read_text() == "".join(f"{i}\n" for i, *_ in VAL)
    qs = [json.loads(x) for x in open(out / "chair_questions.jsonl")]
    assert qs[0] == {"question_id": 139, "image_id": 139, "image": os.path.relpath(
        os.path.join(pub["coco_val_images"], "COCO_val2014_000000000139.jpg"), out), "prompt": "Describe this image."}
    assert (out / "synonyms.txt").read_text() == open(pub["synonyms"]).read()
    info = json.loads((out / "chair_gt_info.json").read_text())
    assert info["stats"]["objects_only_from_captions"] == 1 and info["stats"]["skipped_captions_unknown_image"] == 0
    assert "chair-gt: 7 images" in capsys.readouterr().err
    # the generate -> chair round trip on the written files: captions keyed by the integer COCO ids
    answers = tmp_path / "run" / "chair_answers.jsonl"
    answers.parent.mkdir()
    caps = {139: "A tabby cat on a sofa next to a dog.", 285: "A cup and a spoon on a table.", 632: "A woman.",
            724: "A man with a camera.", 776: "A red motorbike.", 785: "A horse and two riders.", 802: "A clock."}
    answers.write_text("".join(json.dumps({**q, "text": caps[q["image_id"]]}) + "\n" for q in qs))
    ev.main(["chair", "--answers", str(answers), "--annotations", str(out / "chair_gt.json")])  # synonyms beside it
    m = json.loads((tmp_path / "run" / "chair.json").read_text())["metrics"]
    # mentions: tabby cat sofa dog | cup spoon table | woman | man | motorbike | horse riders | clock = 13 (every
    # synonym counts, "tabby" and "cat" too); hallucinated: dog, riders
    assert (m["n_mentions"], m["n_hallucinated"], m["n_hallucinated_captions"]) == (13, 2, 2)


def test_chair_gt_sample(pub, tmp_path):
    ids = [i for i, *_ in VAL]
    for seed in (0, 1, 2):
        _chair_gt(pub, tmp_path / str(seed), "--num-images", "3", "--seed", str(seed))
        got = [int(x) for x in (tmp_path / str(seed) / "sample_ids.txt").read_text().split()]
        assert got == sorted(random.Random(seed).sample(sorted(ids), 3)) == sample_image_ids(ids, 3, seed)
    samples = {(tmp_path / str(s) / "sample_ids.txt").read_text() for s in (0, 1, 2)}
    assert len(samples) > 1  # the seed matters
    _chair_gt(pub, tmp_path / "again", "--num-images", "3", "--seed", "1")
    assert (tmp_path / "again" / "chair_gt.json").read_text() == (tmp_path / "1" / "chair_gt.json").read_text()
    # a published id list is reused as it is
    (tmp_path / "ids.txt").write_text("802\n139\n")
    _chair_gt(pub, tmp_path / "reuse", "--sample-ids", str(tmp_path / "ids.txt"))
    assert list(json.loads((tmp_path / "reuse" / "chair_gt.json").read_text())) == ["139", "802"]
    (tmp_path / "ids.txt").write_text("139\n4242\n")
    with pytest.raises(ValueError, match="ids.txt: 1 ids are not in .*instances_val2014.json, e.g. \\[4242\\]"):
        _chair_gt(pub, tmp_path / "reuse", "--sample-ids", str(tmp_path / "ids.txt"))
    (tmp_path / "ids.txt").write_text("139\nCOCO_val2014_000000000802.jpg\n")
    with pytest.raises(ValueError, match="ids.txt:2: not a COCO image id"):
        _chair_gt(pub, tmp_path / "reuse", "--sample-ids", str(tmp_path / "ids.txt"))
    with pytest.raises(ValueError, match="asked for 8 images, only 7 are annotated"):
        _chair_gt(pub, tmp_path / "x", "--num-images", "8")
    # val + train (the reference loads both): the sample still comes from val, its ground truth does not change
    _chair_gt(pub, tmp_path / "both", "--num-images", "7", "--instances", pub["coco_instances_train"],
              "--captions", pub["coco_captions_train"])
    both = json.loads((tmp_path / "both" / "chair_gt.json").read_text())
    assert {int(k): v["objects"] for k, v in both.items()} == VAL_GT
    with pytest.raises(ValueError, match="--instances: a file is given twice"):
        _chair_gt(pub, tmp_path / "dup", "--instances", pub["coco_instances_val"])
    (tmp_path / "copy.json").write_text(open(pub["coco_instances_val"]).read())
    with pytest.raises(ValueError, match="copy.json: image id 139 is also listed by another instances file"):
        _chair_gt(pub, tmp_path / "dup", "--instances", str(tmp_path / "copy.json"))


def test_chair_gt_strict_readers(pub, tmp_path):
    inst = json.loads(open(pub["coco_instances_val"]).read())
    caps = json.loads(open(pub["coco_captions_val"]).read())

    def run(i=None, c=None):
        ip, cp = tmp_path / "instances_val2014.json", tmp_path / "captions_val2014.json"
        ip.write_text(json.dumps(i or inst))
        cp.write_text(json.dumps(c or caps))
        _chair_gt(pub, tmp_path / "out", "--num-images", "7", instances=str(ip), captions=str(cp))
        return json.loads((tmp_path / "out" / "chair_gt_info.json").read_text())["stats"]

    bad = json.loads(json.dumps(inst))
    del bad["annotations"][1]["category_id"]
    with pytest.raises(ValueError, match="instances_val2014.json: annotations\\[1\\]: missing field 'category_id'"):
        run(i=bad)
    bad = json.loads(json.dumps(inst))
    bad["images"][2]["id"] = "632"
    with pytest.raises(ValueError, match="instances_val2014.json: images\\[2\\]: field 'id' must be int, got '632'"):
        run(i=bad)
    bad = json.loads(json.dumps(inst))
    bad["categories"][0]["name"] = "unicorn"
    with pytest.raises(ValueError, match="categories\\[0\\]: name 'unicorn' is not in the synonym table"):
        run(i=bad)
    bad = json.loads(json.dumps(inst))
    bad["annotations"][0]["category_id"] = 999
    with pytest.raises(ValueError, match="annotations\\[0\\]: category_id 999 is not in categories"):
        run(i=bad)
    badc = json.loads(json.dumps(caps))
    badc["annotations"][3]["caption"] = None
    with pytest.raises(ValueError, match="captions_val2014.json: annotations\\[3\\]: field 'caption' must be str"):
        run(c=badc)
    with pytest.raises(ValueError, match="expected a COCO annotation file"):
        run(i={"images": []})
    # annotations of images no images[] lists are skipped and counted, never silently dropped
    odd, oddc = json.loads(json.dumps(inst)), json.loads(json.dumps(caps))
    odd["annotations"].append({**odd["annotations"][0], "image_id": 31337, "id": 1})
    oddc["annotations"] += [{"image_id": 31337, "id": 2, "caption": "A dog."}] * 2
    stats = run(i=odd, c=oddc)
    assert stats["skipped_instance_annotations_unknown_image"] == 1 and stats["skipped_captions_unknown_image"] == 2
    # a sampled image missing from --images-dir is an error before anything is written
    with pytest.raises(FileNotFoundError, match="1 of the 7 sampled images are not in .*COCO_val2014_000000000802"):
        ev.main(["chair-gt", "--instances", pub["coco_instances_val"], "--captions", pub["coco_captions_val"],
                 "--images-dir", _partial_images(pub, tmp_path), "--synonyms", pub["synonyms"],
                 "--output", str(tmp_path / "o2"), "--num-images", "7"])
    assert not (tmp_path / "o2").exists()


def _partial_images(pub, tmp_path):
    d = tmp_path / "val2014"
    d.mkdir()
    for name in sorted(os.listdir(pub["coco_val_images"]))[:-1]:  # all but COCO_val2014_000000000802.jpg
        os.symlink(os.path.join(pub["coco_val_images"], name), d / name)
    return str(d)
