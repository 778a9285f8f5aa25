"""Tiny ScienceQA, MME, Object HalBench and AMBER trees in the exact public schemas, for tests and rehearsals without
downloads. The questions, answers and captions are ours, written to exercise the official scoring rules; the
Object HalBench vocabulary lines are RLAIF-V's synonyms_refine.txt lines for the categories used, and AMBER's
relation.json entries and safe words, verbatim.

    from rehearsal.public_bench import make_public_bench
    p = make_public_bench(tmp_path)      # -> {name: path}; names below

  sqa/problems.json, sqa/pid_splits.json     ScienceQA (lupantech/ScienceQA data/scienceqa/): {pid: {question,
                                             choices, answer, hint, image, task, grade, subject, topic, category,
                                             skill, lecture, solution, split}}; {train, val, test, ...: [pid]}
  sqa/llava_test_CQM-A.json                  LLaVA's question file: [{id, image? ("<pid>/image.png"), conversations:
                                             [{from: human, value: "<image>\\nContext: ...\\n<question>\\nA. ...},
                                             {from: gpt, value: letter}]}] (the test split, in its order)
  sqa/images/test/<pid>/image.png
  mme/MME_Benchmark_release_version/         MME: existence/ in the images/ + questions_answers_YN/ layout, color/
                                             and code_reasoning/ with image and .txt side by side; "question<TAB>Yes|No"
                                             lines, two per image (one with the double space before "Please")
  mme/llava_mme.jsonl                        LLaVA's question file: {question_id = image path, image, text (+ the
                                             short-answer suffix), category}, an image's two questions one after the
                                             other with the same question_id
  objhal/eval/data/obj_halbench_300_with_image.jsonl   RLAIF-V's question file: {image_id, question, image (the
                                             JPEG, base64)}, laid out as in a RLAIF-V checkout
  objhal/eval/data/synonyms_refine.txt       its vocabulary lines for the categories used
  objhal/eval/eval_gpt_obj_halbench.py       a stand-in holding a `prompt_template` (our wording)
  objhal/coco/annotations/{instances,captions}_{val,train}2014.json   COCO 2014 annotations of those images (or,
                                             given make_public_data's paths, that tree's COCO images and files)
  amber/data/annotations.json                AMBER (junyangwang0410/AMBER data/): a list, item i = id i+1; ids 1..1004
                                             generative {id, type, truth, hallu} (those without an image here have
                                             empty lists: the ids keep AMBER's ranges), then {id, type, truth yes|no}
                                             for attribute (state / number / action), existence, relation
  amber/data/relation.json, safe_words.txt   AMBER's relation.json entries of the objects used and its safe_words.txt,
                                             verbatim
  amber/data/query/query_*.json              [{id, image, query}]: all, generative, discriminative, -existence,
                                             -attribute, -relation
  amber/image/AMBER_<n>.jpg                  scikit-image's photographs (rehearsal/public_data.py), objects ours
"""
from __future__ import annotations

import base64
import io
import json
import os

from PIL import Image

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

# ---------------------------------------------------------------------------------------------- ScienceQA
# pid: (question, choices, answer, hint, has image, grade, subject, topic, split)
SQA = {
    "1": ("Which animal's feet are also adapted for walking on snow?", ["polar bear", "camel"], 0,
          "Arctic hares live in the tundra. Their wide feet help them walk on snow.", True, "grade4",
          "natural science", "biology", "test"),
    "2": ("Which word would you find on a dictionary page with the guide words apple - azure?", ["avocado", "bench"],
          0, "", False, "grade3", "language science", "reference-skills", "test"),
    "3": ("What is the capital of the state shown?", ["Salem", "Boise", "Helena", "Olympia"], 2, "", True, "grade5",
          "social science", "geography", "test"),
    "4": ("Which solution has a higher concentration of pink particles?", ["Solution A", "Solution B", "neither"], 1,
          "The diagram shows two solutions.", True, "grade7", "natural science", "chemistry", "test"),
    "5": ("Is a pencil a solid or a liquid?", ["a solid", "a liquid"], 0, "", False, "grade1", "natural science",
          "physics", "test"),
    "6": ("Which country is highlighted?", ["Fiji", "Tonga", "Samoa", "Palau", "Nauru"], 4, "", True, "grade8",
          "social science", "geography", "test"),
    "7": ("Which tense does the sentence use?\nMia will paint the fence.", ["future tense", "past tense"], 0, "",
          False, "grade10", "language science", "verbs", "test"),
    "8": ("Which of these states is farthest north?", ["Georgia", "Maine", "Texas", "Ohio"], 1,
          "Use the map to answer.", True, "grade2", "social science", "geography", "test"),
    "9": ("Which is a mammal?", ["shark", "whale"], 1, "", True, "grade3", "natural science", "biology", "train"),
    "10": ("Select the liquid.", ["milk", "rock"], 0, "", False, "grade2", "natural science", "physics", "train"),
}


def _sqa_prompt(question: str, choices: list[str], hint: str, image: bool) -> str:
    """The human turn as LLaVA-1.5's llava_test_CQM-A.json writes it."""
    text = (f"Context: {hint}\n" if hint else "") + question + "".join(
        f"\n{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))
    return ("<image>\n" if image else "") + text


def _image(path: str, color: tuple, size: int = 48, fmt: str | None = None) -> bytes:
    img = Image.new("RGB", (size, size + 8), color)
    for x in range(0, size, 6):
        img.putpixel((x, x % (size + 8)), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, format=fmt or ("PNG" if path.endswith(".png") else "JPEG"))
    data = buf.getvalue()
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return data


def make_sqa(root: str, tiny: bool = False) -> dict:
    """sqa/ (module docstring); tiny: test problems 1-3 only (two with an image)."""
    d = os.path.join(root, "sqa")
    problems, splits, questions = {}, {s: [] for s in ("train", "val", "test", "trainval", "minitrain", "minival",
                                                       "minitest")}, []
    for pid, (q, ch, ans, hint, img, grade, subject, topic, split) in SQA.items():
        if tiny and split == "test" and int(pid) > 3:
            continue
        problems[pid] = {"question": q, "choices": ch, "answer": ans, "hint": hint,
                         "image": "image.png" if img else None, "task": "closed choice", "grade": grade,
                         "subject": subject, "topic": topic, "category": "", "skill": "", "lecture": "",
                         "solution": "", "split": split}
        splits[split].append(pid)
        if split == "test":
            rec = {"id": pid}
            if img:
                rec["image"] = f"{pid}/image.png"
                _image(os.path.join(d, "images", "test", pid, "image.png"), (40 * int(pid), 120, 200))
            rec["conversations"] = [{"from": "human", "value": _sqa_prompt(q, ch, hint, img)},
                                    {"from": "gpt", "value": "ABCDE"[ans]}]
            questions.append(rec)
    splits["trainval"] = splits["train"] + splits["val"]
    p = {"sqa_dir": d, "sqa_questions": os.path.join(d, "llava_test_CQM-A.json"),
         "sqa_images": os.path.join(d, "images", "test")}
    for name, obj in (("problems.json", problems), ("pid_splits.json", splits), ("llava_test_CQM-A.json", questions)):
        with open(os.path.join(d, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
    return p


# ---------------------------------------------------------------------------------------------- MME
# subtask: [(image file, [(question without MME's suffix, answer), ...])]; the double flag puts two spaces before
# "Please" (as some of MME's files have)
MME = {
    "existence": [("000000000785.jpg", [("Is there a person in this image?", "Yes"),
                                        ("Is there a bus in this image?", "No")]),
                  ("000000001000.jpg", [("Is there a dog in this image?", "Yes"),
                                        ("Is there a train in this image?", "No")])],
    "color": [("000000002001.jpg", [("Is there a red car in the image?", "Yes"),
                                    ("Is there a green car in the image?", "No")]),
              ("000000002002.jpg", [("Is there a white horse in the image?", "Yes"),
                                    ("Is there a black horse in the image?", "No")])],
    "code_reasoning": [("0001.png", [("Is a python code shown in the picture?", "Yes"),
                                     ("Is a java code shown in the picture?", "No")]),
                       ("0002.png", [("The image shows a python code. Is the output of the code '3'?", "Yes"),
                                     ("The image shows a python code. Is the output of the code '4'?", "No")])],
}
MME_DOUBLE = {("color", "000000002002.jpg")}


def make_mme(root: str, tiny: bool = False) -> dict:
    """mme/ (module docstring); tiny: one image per subtask (both layouts, the double space, perception and
    cognition)."""
    d = os.path.join(root, "mme")
    bench = os.path.join(d, "MME_Benchmark_release_version")
    lines = []
    for k, (cat, items) in enumerate(MME.items()):
        if tiny:
            items = [x for x in items if (cat, x[0]) in MME_DOUBLE] or items[:1]
        folder = os.path.join(bench, cat)
        nested = cat == "existence"
        for n, (image, qas) in enumerate(items):
            rel = f"{cat}/images/{image}" if nested else f"{cat}/{image}"
            _image(os.path.join(bench, rel), (60 * k, 90 + 50 * n, 30))
            sep = "  " if (cat, image) in MME_DOUBLE else " "
            txt = os.path.join(folder, "questions_answers_YN" if nested else "", image.rsplit(".", 1)[0] + ".txt")
            os.makedirs(os.path.dirname(txt), exist_ok=True)
            with open(txt, "w", encoding="utf-8") as f:
                f.write("".join(f"{q}{sep}Please answer yes or no.\t{a}\n" for q, a in qas))
            lines += [{"question_id": rel, "image": rel, "text": q + SHORT_ANSWER_SUFFIX, "category": cat}
                      for q, _ in qas]
    p = {"mme_dir": d, "mme_root": bench, "mme_questions": os.path.join(d, "llava_mme.jsonl")}
    with open(p["mme_questions"], "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    return p


# ---------------------------------------------------------------------------------------------- Object HalBench
# RLAIF-V eval/data/synonyms_refine.txt, verbatim: the lines of the categories used here, in the tests and in
# rehearsal/public_data.py's COCO files
SYNONYMS_REFINE = (
    "person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, "
    "passenger, sister, brother, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, "
    "guy, traveler, mother, father, gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, "
    "guy, foreigner, child, gentleman, caller, offender, coworker, trespasser, patient, politician, "
    "soldier, grandchild, serviceman, walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, "
    "camper, driver, solider, hunter, shopper, villager, pedestrian\n"
    "bicycle, bike, unicycle, minibike, trike\n"
    "car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi\n"
    "motorcycle, scooter, motor bike, motor cycle, motorbike, scooter, moped\n"
    "train, locomotive, tramway, caboose\n"
    "traffic light, street light, traffic signal, stop light, streetlight, stoplight\n"
    "bench, pew\n"
    "cat, kitten, feline, tabby\n"
    "dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, "
    "terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, "
    "corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky\n"
    "horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, "
    "bronco\n"
    "cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison\n"
    "backpack, knapsack\n"
    "frisbee\n"
    "skis, ski\n"
    "wine glass\n"
    "cup\n"
    "knife, pocketknife, knive\n"
    "spoon\n"
    "bowl, container\n"
    "chair, seat, stool\n"
    "couch, sofa, recliner, futon, loveseat, settee, chesterfield\n"
    "dining table, table, desk, coffee table\n"
    "toilet, urinal, commode, toilet, lavatory, potty\n"
    "tv, monitor, televison, television\n"
    "mouse\n"
    "remote, remote control\n"
    "sink\n"
    "clock\n"
    "hair drier, hairdryer\n"
)
CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 7: "train", 10: "traffic light", 15: "bench", 17: "cat",
              18: "dog", 34: "frisbee", 63: "couch", 70: "toilet", 75: "remote", 81: "sink",
              89: "hair drier"}
# (COCO id, split, instance categories, captions)
OBJHAL_IMAGES = [
    (101, "val", ["person", "dog", "frisbee"], ["A man throws a frisbee to his dog in the park.",
                                               "Two people and a dog playing with a frisbee on the grass."]),
    (102, "val", ["toilet", "sink"], ["A bathroom with the toilet seat up next to a sink.",
                                      "A white toilet and a sink in a small bathroom."]),
    (103, "val", ["cat", "couch", "remote"], ["A baby cat sleeping on a sofa next to a remote control.",
                                              "A kitten lies on the couch."]),
    (104, "val", ["car", "traffic light"], ["Cars waiting at a traffic light on a city street.",
                                            "A red car stopped at the stop light."]),
    (105, "train", ["train"], ["A passenger train at the station.", "A long train pulls into a platform."]),
]
OBJHAL_QUESTIONS = [(101, "Describe this image in detail."), (102, "What is happening in this picture?"),
                    (103, "Provide a thorough description of the given image."),
                    (104, "Describe the following image."), (105, "Explain the visual content of the image."),
                    (101, "What do you see in this image?")]


PROMPTS = ("Describe this image in detail.", "What is happening in this picture?",
           "Provide a thorough description of the given image.", "Explain the visual content of the image.")
# a stand-in for RLAIF-V's eval/eval_gpt_obj_halbench.py: only its top-level `prompt_template` is read (our wording,
# not RLAIF-V's, so `objhal` warns that the prompt differs and labels the scores not comparable)
PROMPT_FILE = '''"""Stand-in for RLAIF-V's eval/eval_gpt_obj_halbench.py (a public-schema fixture)."""
prompt_template = """Question: {question}
Answer: {answer}
List the objects the answer says are in the image, as a JSON list of names."""
'''


def _coco(ann: str) -> None:
    """COCO 2014 annotation files of OBJHAL_IMAGES (val and train)."""
    os.makedirs(ann, exist_ok=True)
    cats = [{"supercategory": "thing", "id": k, "name": v} for k, v in CATEGORIES.items()]
    by_name = {v: k for k, v in CATEGORIES.items()}
    for split in ("val", "train"):
        mine = [x for x in OBJHAL_IMAGES if x[1] == split]
        images = [{"license": 1, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "coco_url": "", "height": 56,
                   "width": 48, "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": i}
                  for i, *_ in mine]
        inst = [{"segmentation": [[0, 0, 4, 0, 4, 4]], "area": 8.0, "iscrowd": 0, "image_id": i,
                 "bbox": [0, 0, 4, 4], "category_id": by_name[c], "id": 1000 * i + n}
                for i, _, objs, _ in mine for n, c in enumerate(objs)]
        caps = [{"image_id": i, "id": 2000 * i + n, "caption": c} for i, _, _, cs in mine for n, c in enumerate(cs)]
        head = {"info": {"description": "povid public-schema fixture"}, "licenses": [{"id": 1, "name": "CC0"}]}
        for name, obj in ((f"instances_{split}2014.json", {**head, "images": images, "annotations": inst,
                                                             "categories": cats}),
                          (f"captions_{split}2014.json", {**head, "images": images, "annotations": caps})):
            with open(os.path.join(ann, name), "w", encoding="utf-8") as f:
                json.dump(obj, f)


def make_objhal(root: str, coco: dict | None = None, tiny: bool = False) -> dict:
    """objhal/ laid out like a RLAIF-V checkout (eval/data/, eval/eval_gpt_obj_halbench.py). Without `coco`, its own
    COCO annotations (objhal/coco/annotations) of the hand-built OBJHAL_IMAGES and OBJHAL_QUESTIONS; with
    make_public_data's paths, one question per val2014 image of that tree (the prompts in turn), its COCO files.
    tiny: the first two questions."""
    d = os.path.join(root, "objhal")
    data = os.path.join(d, "eval", "data")
    os.makedirs(data, exist_ok=True)
    if coco is None:
        ann = os.path.join(d, "coco", "annotations")
        _coco(ann)
        jpeg = {i: _image("", (i % 7 * 30, 200 - i % 5 * 30, 90), fmt="JPEG") for i, *_ in OBJHAL_IMAGES}
        questions = OBJHAL_QUESTIONS
    else:
        ann = os.path.dirname(coco["coco_instances_val"])
        with open(coco["coco_instances_val"], encoding="utf-8") as f:
            images = sorted((im["id"], im["file_name"]) for im in json.load(f)["images"])
        jpeg = {}
        for i, name in images:
            with open(os.path.join(coco["coco_val_images"], name), "rb") as f:
                jpeg[i] = f.read()
        questions = [(i, PROMPTS[n % len(PROMPTS)]) for n, (i, _) in enumerate(images)]
    p = {"objhal_dir": d, "objhal_questions": os.path.join(data, "obj_halbench_300_with_image.jsonl"),
         "objhal_synonyms": os.path.join(data, "synonyms_refine.txt"), "objhal_coco": ann,
         "objhal_prompt_file": os.path.join(d, "eval", "eval_gpt_obj_halbench.py")}
    with open(p["objhal_questions"], "w", encoding="utf-8") as f:
        for i, q in questions[:2] if tiny else questions:
            f.write(json.dumps({"image_id": i, "question": q, "image": base64.b64encode(jpeg[i]).decode()}) + "\n")
    with open(p["objhal_synonyms"], "w", encoding="utf-8") as f:
        f.write(SYNONYMS_REFINE)
    with open(p["objhal_prompt_file"], "w", encoding="utf-8") as f:
        f.write(PROMPT_FILE)
    return p


# ---------------------------------------------------------------------------------------------- AMBER
# AMBER data/relation.json @534babf, verbatim: the entries of the objects used below
AMBER_RELATION = {
    "cat": [], "dog": [], "sofa": ["couch", "chair", "bench"], "cup": [], "coffee": ["cafe", "drink"],
    "table": ["desk"], "cake": [], "bottle": [], "woman": ["person", "people", "individual", "girl"], "flag": [],
    "man": ["person", "people", "individual", "boy"], "camera": [], "grass": ["ground"], "building": [],
    "tree": ["forest", "leave", "bush"], "motorbike": ["motorcycle", "bike", "tire", "vehicle", "saddle", "mirror",
                                                       "plate"],
    "wall": ["building"], "car": ["window", "door", "tire", "vehicle", "light", "mirror", "plate"],
    "person": ["people", "individual", "man", "woman", "boy", "girl"], "clock": []}
AMBER_SAFE_WORDS = "orange\nsnack\nline\ncamera\nlight\nshoe\nsign\nrange\nindividual"  # no final newline, as published
# AMBER_<n>.jpg, n = 1, 2, ...: (photo of rehearsal/public_data.py, truth objects, hallu objects), labels ours
AMBER_IMAGES = [("chelsea", ["cat"], ["dog", "sofa"]), ("coffee", ["cup", "coffee", "table"], ["cake", "bottle"]),
                ("astronaut", ["woman", "flag"], ["man", "dog"]),
                ("camera", ["man", "camera", "grass", "building"], ["tree", "dog"]),
                ("motorcycle_left", ["motorbike", "wall"], ["car", "person"]), ("clock", ["clock"], ["wall", "person"])]
# (image n, annotation type, truth, query) in AMBER's order: attribute (state, number, action), existence, relation
AMBER_QUESTIONS = [
    (1, "discriminative-attribute-state", "yes", "Is the cat striped in this image?"),
    (1, "discriminative-attribute-state", "no", "Is the cat white in this image?"),
    (1, "discriminative-attribute-number", "yes", "Is there one cat in this image?"),
    (1, "discriminative-attribute-number", "no", "Are there two cats in this image?"),
    (3, "discriminative-attribute-action", "yes", "Does the woman smile in this image?"),
    (3, "discriminative-attribute-action", "no", "Does the woman run in this image?"),
    (5, "discriminative-attribute-state", "yes", "Is the motorbike red in this image?"),
    (5, "discriminative-attribute-state", "no", "Is the motorbike blue in this image?"),
    (1, "discriminative-hallucination", "no", "Is there a dog in this image?"),
    (2, "discriminative-hallucination", "no", "Is there a cake in this image?"),
    (4, "discriminative-hallucination", "no", "Is there a tree in this image?"),
    (4, "discriminative-relation", "yes", "Is there direct contact between the man and camera?"),
    (4, "relation", "no", "Is there direct contact between the man and building?"),
    (2, "discriminative-relation", "yes", "Is there direct contact between the cup and table?"),
]
AMBER_N_GENERATIVE = 1004  # AMBER's README: ids 1..1004 are generative, the yes/no questions start at 1005


def make_amber(root: str, image_size: int = 160, tiny: bool = False) -> dict:
    """amber/ laid out like a checkout of AMBER (data/) with its images unzipped into image/. tiny: AMBER_1 and 2,
    the first yes/no question of each dimension on them."""
    from rehearsal.public_data import _photo, _save  # the real photographs (scikit-image), only AMBER uses them
    d = os.path.join(root, "amber")
    data, images = os.path.join(d, "data"), os.path.join(d, "image")
    os.makedirs(os.path.join(data, "query"), exist_ok=True)
    ann, queries = [], {"generative": [], "discriminative-attribute": [], "discriminative-existence": [],
                        "discriminative-relation": []}
    for n, (photo, truth, hallu) in enumerate(AMBER_IMAGES[:2] if tiny else AMBER_IMAGES, 1):
        _save(_photo(photo), os.path.join(images, f"AMBER_{n}.jpg"), image_size)
        ann.append({"id": n, "type": "generative", "truth": truth, "hallu": hallu})
        queries["generative"].append({"id": n, "image": f"AMBER_{n}.jpg", "query": "Describe this image."})
    ann += [{"id": i, "type": "generative", "truth": [], "hallu": []} for i in range(len(ann) + 1,
                                                                                       AMBER_N_GENERATIVE + 1)]
    for n, kind, truth, query in AMBER_QUESTIONS:
        dim = "existence" if kind.endswith("hallucination") else "attribute" if "attribute" in kind else "relation"
        if tiny and (n > 2 or queries[f"discriminative-{dim}"]):
            continue
        ann.append({"id": len(ann) + 1, "type": kind, "truth": truth})
        queries[f"discriminative-{dim}"].append({"id": len(ann), "image": f"AMBER_{n}.jpg", "query": query})
    disc = [q for k, qs in queries.items() if k != "generative" for q in qs]
    files = {**queries, "discriminative": disc, "all": queries["generative"] + disc}
    for name, obj in [("annotations.json", ann), ("relation.json", AMBER_RELATION)] + \
            [(os.path.join("query", f"query_{k}.json"), v) for k, v in files.items()]:
        with open(os.path.join(data, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4)
    with open(os.path.join(data, "safe_words.txt"), "w", encoding="utf-8") as f:
        f.write(AMBER_SAFE_WORDS)
    return {"amber_dir": d, "amber_data": data, "amber_images": images,
            "amber_questions": os.path.join(data, "query", "query_all.json")}


def make_public_bench(root: str, coco: dict | None = None, image_size: int = 160, tiny: bool = False) -> dict:
    """All four trees under root; `coco`: make_public_data's paths, to ask Object HalBench about its COCO images;
    tiny: a handful of questions per benchmark (the test suite's rehearsal)."""
    root = str(root)
    return {**make_sqa(root, tiny), **make_mme(root, tiny), **make_objhal(root, coco, tiny),
            **make_amber(root, image_size, tiny)}
