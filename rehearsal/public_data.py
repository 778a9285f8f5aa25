"""A tiny public-data tree in the exact public schemas, for tests and end-to-end rehearsals without downloads.

    from rehearsal.public_data import make_public_data
    paths = make_public_data(tmp_path)     # -> {name: path}; see PATHS for the names

Photographs are scikit-image's bundled ones (skimage.data: chelsea and coffee "no copyright restrictions, CC0 by the
photographer"; astronaut and rocket public domain; camera, coins, clock, horse and stereo_motorcycle as shipped with
scikit-image), shrunk to at most `image_size` pixels a side and saved as JPEG under COCO and MMHal-Bench file names.
Their object labels are ours, by hand, with real COCO category ids and names. The files:

  coco/annotations/instances_{val,train}2014.json   COCO instances: info, licenses, images[{license, file_name,
                                                    coco_url, height, width, date_captured, flickr_url, id}],
                                                    annotations[{segmentation, area, iscrowd, image_id, bbox,
                                                    category_id, id}], categories[{supercategory, id, name}]
                                                    (only the categories used)
  coco/annotations/captions_{val,train}2014.json    COCO captions: info, licenses, images, annotations[{image_id,
                                                    id, caption}], five captions per image
  coco/val2014/COCO_val2014_%012d.jpg, coco/train2014/COCO_train2014_%012d.jpg
  coco/synonyms.txt                                 the reference CHAIR table's format (LisaAnne/Hallucination
                                                    data/synonyms.txt): its lines for the categories used, verbatim
                                                    (double space and trailing space included)
  pope/output/coco/coco_pope_{random,popular,adversarial}.json
                                                    RUCAIBox/POPE's files, where its repo keeps them (JSONL):
                                                    {question_id, image, text, label}, question ids from 1 per file
  pope/llava_pope_test.jsonl                        LLaVA-1.5's question file: {question_id, image, text (with the
                                                    short-answer suffix), category}; all three splits, ids our own
                                                    (LLaVA's real numbering was not checked; eval.py needs none)
  mmhal/response_template.json, mmhal/images/       MMHal-Bench: a list of {question_type, question_topic, image_id,
                                                    image_src, image_content, question, gt_answer, model_answer}, one
                                                    record per question type in the official order (index % 8);
                                                    images named by the basename of image_src (the HF dataset's layout)
  povid/POVID_preference_data_for_VLLMs.json        POVID's released preference data: a list of {id, image
                                                    (COCO_train2014_%012d.jpg, under coco/train2014), conversations,
                                                    rejected_conversations (same human turn, hallucinated answer)}
  llava/llava_v1_5_mix665k.json, llava/coco/train2017/   LLaVA-1.5's instruction data: {id, image
                                                    ("coco/train2017/%012d.jpg", relative to llava/), conversations};
                                                    the real file names COCO images as in train2017, not train2014;
                                                    one record has no image (the real file's text-only ShareGPT rows)
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

# (COCO id, photo, instance categories, five captions); GT for CHAIR = instances + what the captions name
VAL = [
    (139, "chelsea", ["cat"], ["A tabby cat looks straight at the camera.", "Close up of a kitten's face with green "
                               "eyes.", "A cat with big eyes resting on a couch.", "The face of a brown striped cat.",
                               "A cat staring at the viewer."]),
    (285, "coffee", ["cup", "spoon", "dining table"],
     ["A cup of espresso on a red saucer with a spoon.", "Coffee in a red cup on a wooden table.",
      "An espresso cup and a small spoon.", "A red cup and saucer sit on a table.",
      "A cup of coffee seen from above."]),
    (632, "astronaut", ["person"], ["A woman astronaut in an orange suit poses for a photo.", "An astronaut smiling "
                                    "in front of a flag.", "A female astronaut with a helmet beside her.",
                                    "A woman in a space suit next to a model rocket.",
                                    "Portrait of a smiling astronaut."]),
    (724, "camera", ["person"], ["A man looking through a camera on a tripod.", "A photographer in a dark coat in a "
                                 "field.", "A man takes a picture with an old camera.", "A person standing behind a "
                                 "camera on a grassy field.", "A black and white photo of a cameraman."]),
    (776, "motorcycle_left", ["motorcycle"], ["A red motorcycle parked in a garage.", "A motorbike stands in a "
                                              "workshop full of boxes.", "A red and black motor bike indoors.",
                                              "A parked motorcycle in a cluttered shop.",
                                              "A motorcycle next to shelves."]),
    (785, "horse", ["horse"], ["A black silhouette of a horse.", "The outline of a horse on a white background.",
                               "A horse shape in black.", "A drawing of a standing horse.", "A black horse figure."]),
    (802, "clock", ["clock"], ["A blurry photo of a clock.", "A clock in motion blur.", "A round clock on a gray "
                               "background.", "A clock face that is out of focus.", "A moving clock."]),
]
# the CHAIR ground truth the reference rule gives for VAL (instances + caption objects)
VAL_GT = {139: ["cat", "couch"], 285: ["cup", "dining table", "spoon"], 632: ["person"], 724: ["person"],
          776: ["motorcycle"], 785: ["horse"], 802: ["clock"]}
TRAIN = [
    (9, "coffee", ["cup", "spoon", "dining table"],
     ["A small cup of coffee with a spoon on a saucer.", "Espresso served in a red cup.", "A cup on a wooden table.",
      "A red coffee cup seen from above.", "A spoon rests beside a cup of coffee."]),
    (25, "chelsea", ["cat"], ["A striped cat looking up.", "Close up of a cat's face.", "A tabby cat with green "
                              "eyes.", "A kitten staring ahead.", "The head of a brown cat."]),
    (30, "astronaut", ["person"], ["An astronaut in an orange suit.", "A smiling woman in a space suit.",
                                   "A woman astronaut in front of a flag.", "Portrait of an astronaut.",
                                   "A female astronaut poses for the camera."]),
    (34, "motorcycle_right", ["motorcycle"], ["A red motorcycle in a garage.", "A parked motorbike indoors.",
                                              "A motorcycle among boxes.", "A red motorcycle on a concrete floor.",
                                              "A motorcycle in a workshop."]),
]
CATEGORIES = [("person", 1, "person"), ("vehicle", 3, "car"), ("vehicle", 4, "motorcycle"), ("animal", 17, "cat"),
              ("animal", 18, "dog"), ("animal", 19, "horse"), ("kitchen", 47, "cup"), ("kitchen", 50, "spoon"),
              ("kitchen", 51, "bowl"), ("furniture", 62, "chair"), ("furniture", 63, "couch"),
              ("furniture", 67, "dining table"), ("indoor", 85, "clock")]
SYNONYMS = """person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, \
passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, guy, traveler, mother, \
father, gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, person, woman, guy, foreigner, child, \
gentleman, caller, offender, coworker, trespasser, patient, politician, soldier, grandchild, serviceman, walker, \
drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, driver, solider, hunter, shopper, villager
car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped
cat, kitten, feline, tabby
dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, terrier, \
poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, corgi, cocker, greyhound, \
retriever, brindle, hound, whippet, husky
horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, bronco
cup
spoon
bowl, container
chair, seat, stool
couch, sofa, recliner, futon, loveseat, settee, chesterfield 
dining table, table, desk
clock
"""
# POPE: per split, (image id, object, label) in the official order (a yes question, then a no question)
POPE = {
    "random": [(139, "cat", "yes"), (139, "dog", "no"), (285, "cup", "yes"), (285, "car", "no"),
               (776, "motorcycle", "yes"), (776, "clock", "no")],
    "popular": [(139, "cat", "yes"), (139, "person", "no"), (285, "cup", "yes"), (285, "person", "no"),
                (776, "motorcycle", "yes"), (776, "person", "no")],
    "adversarial": [(139, "cat", "yes"), (139, "dog", "no"), (285, "cup", "yes"), (285, "bowl", "no"),
                    (776, "motorcycle", "yes"), (776, "car", "no")],
}
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
# MMHal-Bench, one record per type in the official order: (type, photo, topic, image_id, image_src, contents, q, gt)
MMHAL = [
    ("attribute", "chelsea", "animal/cat", "0a6d1f3c9b2e4d57",
     "https://c2.staticflickr.com/1/101/1201_a1b2c3d4e5_o.jpg", ["Cat", "Whiskers"], "What color are the cat's eyes?",
     "The cat's eyes are green."),
    ("adversarial", "coffee", "food/drink", "1b7e2a4dac3f5e68",
     "https://c4.staticflickr.com/2/202/2302_b2c3d4e5f6_o.jpg", ["Coffee cup", "Saucer", "Spoon", "Table"],
     "What is the dog drinking from the cup?",
     "There is no dog in the image; it shows a cup of coffee on a saucer with a spoon."),
    ("comparison", "motorcycle_left", "vehicle/motorcycle", "2c8f3b5ebd406f79",
     "https://c1.staticflickr.com/3/303/3403_c3d4e5f6a7_o.jpg", ["Motorcycle", "Shelf", "Box"],
     "Which is bigger in the image, the motorcycle or a box on the shelves?", "The motorcycle is bigger."),
    ("counting", "coins", "object/coin", "3d904c6fce51708a", "https://c7.staticflickr.com/4/404/4504_d4e5f6a7b8_o.jpg",
     ["Coin"], "How many coins are there?", "There are 24 coins, in four rows of six."),
    ("relation", "astronaut", "people/astronaut", "4ea15d70df62819b",
     "https://c3.staticflickr.com/5/505/5605_e5f6a7b8c9_o.jpg", ["Person", "Helmet", "Flag"],
     "What is in front of the woman on the right side of the image?", "A white helmet."),
    ("environment", "rocket", "vehicle/rocket", "5fb26e81e073920c",
     "https://c5.staticflickr.com/6/606/6706_f6a7b8c9d0_o.jpg", ["Rocket", "Tower", "Sky"],
     "Is this photo taken during the day or at night?", "It is taken at dusk or night; the sky is dark blue."),
    ("holistic", "camera", "people/photographer", "60c37f92f184a31d",
     "https://c6.staticflickr.com/7/707/7807_a7b8c9d0e1_o.jpg", ["Man", "Camera", "Tripod", "Grass"],
     "Describe this image in detail.", "A black and white photo of a man in a dark coat looking through a camera "
     "on a tripod in a grassy field, with buildings far behind him."),
    ("other", "clock", "object/clock", "71d48003a295b42e", "https://c8.staticflickr.com/8/808/8908_b8c9d0e1f2_o.jpg",
     ["Clock"], "Why does the clock look blurry?", "It was photographed while moving, so it shows motion blur."),
]
PATHS = ("root", "coco_instances_val", "coco_captions_val", "coco_instances_train", "coco_captions_train",
         "coco_val_images", "coco_train_images", "synonyms", "pope_dir", "pope_random", "pope_popular",
         "pope_adversarial", "llava_pope_test", "mmhal_template", "mmhal_images", "povid_pairs", "llava_sft",
         "llava_image_folder")


def _photo(name: str, mirror: bool = False) -> Image.Image:
    import skimage.data as sk  # imported here: only this helper needs it
    if name.startswith("motorcycle_"):
        arr = sk.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        arr = getattr(sk, name)()
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255  # the horse: a black figure (False) on white
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    img = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else img


def _save(img: Image.Image, path: str, size: int) -> tuple[int, int]:
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, "JPEG", quality=90)
    return img.size


def _dump(path: str, obj, jsonl: bool = False) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            f.write("".join(json.dumps(r) + "\n" for r in obj))
        else:
            json.dump(obj, f)
    return path


def _coco(rows, split: str, img_dir: str, size: int) -> tuple[dict, dict]:
    """(instances, captions) in COCO's layout for rows of (id, photo, categories, captions)."""
    info = {"description": "povid test fixture in the COCO 2014 layout", "url": "http://cocodataset.org",
            "version": "1.0", "year": 2014, "contributor": "povid tests", "date_created": "2015-01-27 09:11:52.357475"}
    licenses = [{"url": "http://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0"}]
    cat_id = {name: i for _, i, name in CATEGORIES}
    images, anns, caps = [], [], []
    for image_id, photo, objects, texts in rows:
        name = f"COCO_{split}2014_{image_id:012d}.jpg"
        w, h = _save(_photo(photo, mirror=split == "train"), os.path.join(img_dir, name), size)
        images.append({"license": 1, "file_name": name, "coco_url": f"http://images.cocodataset.org/{split}2014/{name}",
                       "height": h, "width": w, "date_captured": "2013-11-14 16:28:13",
                       "flickr_url": f"http://farm1.staticflickr.com/1/{image_id}_0123456789_z.jpg", "id": image_id})
        for k, obj in enumerate(objects):  # one box per object, a quarter of the image each
            x, y, bw, bh = (k % 2) * w / 2, (k // 2) * h / 2, w / 2, h / 2
            anns.append({"segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], "area": bw * bh,
                         "iscrowd": 0, "image_id": image_id, "bbox": [x, y, bw, bh], "category_id": cat_id[obj],
                         "id": 1000 * image_id + k})
        caps += [{"image_id": image_id, "id": 100000 + 10 * image_id + k, "caption": t} for k, t in enumerate(texts)]
    cats = [{"supercategory": s, "id": i, "name": n} for s, i, n in CATEGORIES]
    return ({"info": info, "images": images, "licenses": licenses, "annotations": anns, "categories": cats},
            {"info": info, "images": images, "licenses": licenses, "annotations": caps})


def _question(obj: str) -> str:
    return f"Is there {'an' if obj[0] in 'aeiou' else 'a'} {obj} in the image?"


def make_public_data(root, image_size: int = 160) -> dict[str, str]:
    """Write the tree of the module docstring under `root`; returns {name: absolute path} for the names in PATHS."""
    root = os.path.abspath(os.fspath(root))
    p = {"root": root, "coco_val_images": os.path.join(root, "coco", "val2014"),
         "coco_train_images": os.path.join(root, "coco", "train2014"),
         "pope_dir": os.path.join(root, "pope", "output", "coco"),
         "mmhal_images": os.path.join(root, "mmhal", "images"), "llava_image_folder": os.path.join(root, "llava")}
    ann = os.path.join(root, "coco", "annotations")
    for split, rows, img_dir in (("val", VAL, p["coco_val_images"]), ("train", TRAIN, p["coco_train_images"])):
        inst, caps = _coco(rows, split, img_dir, image_size)
        p[f"coco_instances_{split}"] = _dump(os.path.join(ann, f"instances_{split}2014.json"), inst)
        p[f"coco_captions_{split}"] = _dump(os.path.join(ann, f"captions_{split}2014.json"), caps)
    p["synonyms"] = os.path.join(root, "coco", "synonyms.txt")
    with open(p["synonyms"], "w", encoding="utf-8") as f:
        f.write(SYNONYMS)

    llava_lines, qid = [], 1
    for split in ("adversarial", "popular", "random"):
        lines = [{"question_id": i, "image": f"COCO_val2014_{im:012d}.jpg", "text": _question(obj), "label": lab}
                 for i, (im, obj, lab) in enumerate(POPE[split], 1)]
        p[f"pope_{split}"] = _dump(os.path.join(p["pope_dir"], f"coco_pope_{split}.json"), lines, jsonl=True)
        for line in lines:
            llava_lines.append({"question_id": qid, "image": line["image"], "text": line["text"] + LLAVA_SUFFIX,
                                "category": split})
            qid += 1
    p["llava_pope_test"] = _dump(os.path.join(root, "pope", "llava_pope_test.jsonl"), llava_lines, jsonl=True)

    template = []
    for qtype, photo, topic, image_id, src, contents, question, gt in MMHAL:
        _save(_photo(photo), os.path.join(p["mmhal_images"], os.path.basename(src)), image_size)
        template.append({"question_type": qtype, "question_topic": topic, "image_id": image_id, "image_src": src,
                         "image_content": contents, "question": question, "gt_answer": gt, "model_answer": ""})
    p["mmhal_template"] = _dump(os.path.join(root, "mmhal", "response_template.json"), template)

    pairs, sft = [], []
    for image_id, photo, objects, texts in TRAIN:
        human = {"from": "human", "value": "<image>\nDescribe this image in detail."}
        truth = " ".join(texts[:2])
        fake = texts[0].rstrip(".") + ", next to a dog sleeping on a chair. " + texts[1]  # an injected dog and chair
        pairs.append({"id": f"COCO_train2014_{image_id:012d}", "image": f"COCO_train2014_{image_id:012d}.jpg",
                      "conversations": [human, {"from": "gpt", "value": truth}],
                      "rejected_conversations": [human, {"from": "gpt", "value": fake}]})
        rel = f"coco/train2017/{image_id:012d}.jpg"
        _save(_photo(photo, mirror=True), os.path.join(p["llava_image_folder"], rel), image_size)
        sft.append({"id": f"{image_id:012d}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in this image?"}, {"from": "gpt", "value": texts[0]},
            {"from": "human", "value": f"Is there a {objects[0]} in the image?"}, {"from": "gpt", "value": "Yes."}]})
    sft.append({"id": "sharegpt_0001", "conversations": [
        {"from": "human", "value": "What is a preference pair?"},
        {"from": "gpt", "value": "Two answers to one prompt, one of them marked as the better."}]})
    p["povid_pairs"] = _dump(os.path.join(root, "povid", "POVID_preference_data_for_VLLMs.json"), pairs)
    p["llava_sft"] = _dump(os.path.join(root, "llava", "llava_v1_5_mix665k.json"), sft)
    assert set(p) == set(PATHS), sorted(set(p) ^ set(PATHS))
    return p
