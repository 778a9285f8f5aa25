"""CHAIR on hand-computed cases: repeats, synonyms, two-word phrases, plurals, the baby/adult and passenger rules,
the toilet-seat rule, a caption with no object word; the singulariser; synonym-file parsing; errors; the CLI."""
import json

import pytest

import eval as ev
from eval_chair import Synonyms, chair_scores, singularize

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
        ev.load_annotations(str(tmp_path / "bad.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"1": {"objects": "dog"}}))
    with pytest.raises(ValueError, match="bad.json: key '1': needs an 'objects' list"):
        ev.load_annotations(str(tmp_path / "bad.json"))
