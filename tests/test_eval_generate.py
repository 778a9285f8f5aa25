"""eval.py generate: a tiny random Llava + a word-level tokenizer saved as a checkpoint; batched greedy answers,
question fields carried over, and a killed run (answers partly written, last line truncated) resumed exactly; the
public question files (POPE's, LLaVA's, MMHal-Bench's template) with --image-root, the short-answer suffix and the
filled template; recipes; a liuhaotian checkpoint with --vision-tower answering as its llava-hf twin."""
import json
import os

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

import eval as ev
from evals.files import SHORT_ANSWER_SUFFIX
from model import Llava, LlavaConfig
from model.config import TextConfig, VisionConfig
from model.tokenizer import Tokenizer

WORDS = ["USER", "ASSISTANT", ":", "is", "there", "a", "dog", "cat", "in", "the", "image", "?", "yes", "no",
         "describe", "this", ".", "red", "ball", "on", "grass"]


def make_checkpoint(path):
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tk = HFTokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    tk.add_special_tokens(specials)
    tok = Tokenizer(tk)
    cfg = LlavaConfig(
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=16, projection_dim=16),
        text=TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        rms_norm_eps=1e-5, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                        pad_token_id=tok.pad_id),
        image_token_id=tok.image_token_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    m = Llava(cfg)
    with torch.no_grad():  # well-separated logits: greedy choices must not hinge on float noise
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    m.save_pretrained(str(path))
    tok.save_pretrained(str(path))


def test_generate_and_resume(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    make_checkpoint(ckpt)
    (tmp_path / "data" / "img").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    qs = []
    for i in range(5):
        arr = (torch.rand(24 + 4 * i, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / "data" / "img" / f"{i}.png")
        qs.append({"question_id": f"q{i}", "image": f"img/{i}.png", "image_id": i, "label": "yes",
                   "prompt": ["Is there a dog in the image?", "Describe this image ."][i % 2]})
    qfile = tmp_path / "data" / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    args = ["generate", "--checkpoint", str(ckpt), "--questions", str(qfile), "--batch-size", "2",
            "--max-new-tokens", "6"]

    full = tmp_path / "full.jsonl"
    ev.main(args + ["--output", str(full)])
    answers = [json.loads(line) for line in open(full)]
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in qs]
    for a, q in zip(answers, qs):
        assert {k: a[k] for k in q} == q and a["model"] == str(ckpt)  # the question's fields are kept
        assert a["gen"] == {"template": "vicuna_v1", "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 6,
                            "seed": 0, "dtype": "float32", "image_aspect_ratio": "pad",
                            "sampling": "per-item seeds (model.generate.row_generators)", "suffix": ""}  # CPU defaults; pad: the checkpoint config's image_aspect_ratio
        assert isinstance(a["text"], str) and "<pad>" not in a["text"] and "</s>" not in a["text"]
    assert len({a["text"] for a in answers}) > 1  # the images/prompts actually matter
    err = capsys.readouterr().err
    assert "generate: 5/5 (100%)" in err and "ETA" in err

    # a killed run: two answers written, the third cut mid-line
    part = tmp_path / "part.jsonl"
    lines = open(full).read().splitlines(keepends=True)
    part.write_text(lines[0] + lines[1] + lines[2][:15])
    ev.main(args + ["--output", str(part)])
    err = capsys.readouterr().err
    assert "2 already answered" in err and "3 to go" in err
    resumed = [json.loads(line) for line in open(part)]
    assert resumed == answers  # same batches (q2,q3), (q4) as the full run: identical greedy answers
    ev.main(args + ["--output", str(part)])  # nothing left: no model is even loaded
    assert "0 to go" in capsys.readouterr().err
    assert open(part).read() == open(full).read()

    # greedy answers do not depend on how the prompts were batched (left padding is masked)
    single = tmp_path / "single.jsonl"
    ev.main(args[:-4] + ["--batch-size", "1", "--max-new-tokens", "6", "--output", str(single)])
    assert [json.loads(line)["text"] for line in open(single)] == [a["text"] for a in answers]


def test_generate_rejects_bad_question_files(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "image": "a.png", "prompt": "x"}) + "\n" +
                 json.dumps({"question_id": 1, "image": "b.png", "prompt": "y"}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl:2: question_id 1 appears twice"):
        ev.main(["generate", "--checkpoint", "nowhere", "--questions", str(q), "--output", str(tmp_path / "a")])
    q.write_text(json.dumps({"question_id": 1, "prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl:1: missing field 'image'"):
        ev.main(["generate", "--checkpoint", "nowhere", "--questions", str(q), "--output", str(tmp_path / "a")])
    q.write_text(json.dumps({"question_id": 1, "image": "a.png", "prompt": "x"}) + "\n" +
                 json.dumps({"question_id": 2, "image": "b.png", "question": "y"}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl:2: no question: needs field 'prompt' .* or 'text'"):
        ev.main(["generate", "--checkpoint", "nowhere", "--questions", str(q), "--output", str(tmp_path / "a")])
    q.write_text(json.dumps({"question_id": 1, "image": 7, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="q.jsonl:1: field 'image' must be a file name, got 7"):
        ev.main(["generate", "--checkpoint", "nowhere", "--questions", str(q), "--output", str(tmp_path / "a")])


RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "eval.toml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from rehearsal.public_data import make_public_data
    root = tmp_path_factory.mktemp("gen")
    make_checkpoint(root / "ckpt")
    return str(root / "ckpt"), make_public_data(root / "public", image_size=40)


def _gen(ckpt, questions, out, *extra):
    ev.main(["generate", "--checkpoint", ckpt, "--questions", questions, "--output", str(out),
             "--max-new-tokens", "3", *extra])
    return [json.loads(x) for x in open(out)]


def test_public_question_files(world, tmp_path, capsys):
    ckpt, pub = world
    lines = [json.loads(x) for x in open(pub["pope_random"])]
    with pytest.raises(FileNotFoundError, match="6 of 6 images not found .*coco_pope_random.json:1: .*"
                                                "COCO_val2014_000000000139.jpg.*; pass --image-root"):
        _gen(ckpt, pub["pope_random"], tmp_path / "x.jsonl")
    ans = _gen(ckpt, pub["pope_random"], tmp_path / "pope.jsonl", "--image-root", pub["coco_val_images"])
    for a, q in zip(ans, lines):  # LLaVA's answer layout: the question in "question", the answer in "text"
        assert a["question_id"] == q["question_id"] and a["label"] == q["label"] and a["question"] == q["text"]
        assert a["prompt"] == q["text"] + SHORT_ANSWER_SUFFIX and a["gen"]["suffix"] == SHORT_ANSWER_SUFFIX
        assert a["image"] == q["image"] and isinstance(a["text"], str)
    off = _gen(ckpt, pub["pope_random"], tmp_path / "off.jsonl", "--image-root", pub["coco_val_images"],
               "--no-short-answer-suffix")
    assert off[0]["prompt"] == lines[0]["text"] and off[0]["gen"]["suffix"] == ""
    # LLaVA's file already carries the suffix: never twice
    llava = _gen(ckpt, pub["llava_pope_test"], tmp_path / "llava.jsonl", "--image-root", pub["coco_val_images"])
    assert llava[0]["prompt"] == llava[0]["question"] and llava[0]["prompt"].endswith(SHORT_ANSWER_SUFFIX)
    assert llava[0]["prompt"].count("Answer the question") == 1 and llava[0]["category"] == "adversarial"
    # the scorer takes these answers as they are
    ev.main(["pope", "--answers", str(tmp_path / "pope.jsonl"), "--questions", pub["pope_random"]])
    assert json.loads((tmp_path / "pope_random.json").read_text())["protocol"]["gen"][0]["suffix"] == \
        SHORT_ANSWER_SUFFIX
    # MMHal-Bench's template: question_id = index, no suffix, and the filled template in the official layout
    filled = tmp_path / "filled.json"
    mm = _gen(ckpt, pub["mmhal_template"], tmp_path / "mmhal.jsonl", "--image-root", pub["mmhal_images"],
              "--filled-template", str(filled))
    template = json.loads(open(pub["mmhal_template"]).read())
    assert [a["question_id"] for a in mm] == list(range(8)) and mm[1]["prompt"] == template[1]["question"]
    assert mm[0]["gen"]["image_aspect_ratio"] == "pad" and mm[0]["gen"]["suffix"] == ""  # LLaVA-RLHF's protocol
    ev.main(["generate", "--checkpoint", ckpt, "--questions", pub["mmhal_template"], "--output",
             str(tmp_path / "mmhal_default.jsonl"), "--image-root", pub["mmhal_images"], "--shard", "3/4"])
    one = [json.loads(x) for x in open(tmp_path / "mmhal_default.jsonl")]
    assert [a["question_id"] for a in one] == [3, 7] and one[0]["gen"]["max_new_tokens"] == 1024
    got = json.loads(filled.read_text())
    assert [r["model_answer"] for r in got] == [a["text"] for a in mm]
    assert [{k: v for k, v in r.items() if k != "model_answer"} for r in got] == \
           [{k: v for k, v in r.items() if k != "model_answer"} for r in template]
    capsys.readouterr()


def test_recipe_sets_defaults(world, tmp_path):
    ckpt, pub = world
    ans = _gen(ckpt, pub["pope_random"], tmp_path / "r.jsonl", "--image-root", pub["coco_val_images"],
               "--recipe", RECIPE + ":mmhal")  # the command line's --max-new-tokens 3 wins over the recipe's 1024
    g = ans[0]["gen"]
    assert (g["template"], g["temperature"], g["max_new_tokens"], g["image_aspect_ratio"]) == \
           ("vicuna_v1", 0.0, 3, "pad")
    assert g["suffix"] == "" and g["recipe"] == RECIPE + ":mmhal"  # mmhal: no short-answer suffix, even on POPE lines
    bad = tmp_path / "bad.toml"
    bad.write_text("[pope]\ntemperature = 0.0\nbeams = 4\n")
    with pytest.raises(SystemExit, match="bad.toml:pope: unknown key\\(s\\) beams"):
        _gen(ckpt, pub["pope_random"], tmp_path / "b.jsonl", "--recipe", f"{bad}:pope")
    bad.write_text("[pope]\ntemperature = \"hot\"\n")
    with pytest.raises(SystemExit, match="temperature='hot' is not a valid float"):
        _gen(ckpt, pub["pope_random"], tmp_path / "b.jsonl", "--recipe", f"{bad}:pope")


def test_liuhaotian_with_vision_tower(tmp_path):
    """The same weights in the llava-hf layout and in the original layout + an openai CLIP dir give the same
    answers; the aspect ratio defaults to each config's (liuhaotian: pad; llava-hf: none, i.e. square)."""
    from model_fixtures import EOS, IMAGE_TOKEN, PAD_TOKEN, VOCAB, make_hf_llava, make_liuhaotian
    hf = make_hf_llava(str(tmp_path / "hf"))
    make_liuhaotian(hf, str(tmp_path / "orig"), str(tmp_path / "clip"))
    specials = {"<unk>": 0, "<s>": 1, "</s>": EOS, "<image>": IMAGE_TOKEN, "<pad>": PAD_TOKEN}
    vocab = {**specials, **{w: 3 + i for i, w in enumerate(WORDS)}}
    taken = set(vocab.values())
    vocab.update({f"w{i}": i for i in range(VOCAB) if i not in taken})  # every id the random model may emit
    tk = HFTokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = Whitespace()
    tk.add_special_tokens(list(specials))
    Tokenizer(tk).save_pretrained(str(tmp_path / "hf"))
    (tmp_path / "img").mkdir()
    g = torch.Generator().manual_seed(1)
    qs = []
    for i in range(3):
        Image.fromarray((torch.rand(30, 20 + 10 * i, 3, generator=g) * 255).to(torch.uint8).numpy()).save(
            tmp_path / "img" / f"{i}.png")
        qs.append({"question_id": i, "image": f"img/{i}.png", "prompt": "is there a dog in the image ?"})
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    q = str(tmp_path / "q.jsonl")
    with pytest.raises(ValueError, match="without its CLIP tower"):
        _gen(str(tmp_path / "orig"), q, tmp_path / "none.jsonl", "--tokenizer", str(tmp_path / "hf"))
    orig = _gen(str(tmp_path / "orig"), q, tmp_path / "orig.jsonl", "--vision-tower", str(tmp_path / "clip"),
                "--tokenizer", str(tmp_path / "hf"))
    twin = _gen(str(tmp_path / "hf"), q, tmp_path / "hf.jsonl")  # llava-hf's config says nothing: LLaVA-1.5's pad
    square = _gen(str(tmp_path / "hf"), q, tmp_path / "sq.jsonl", "--image-aspect-ratio", "square")
    assert orig[0]["gen"]["image_aspect_ratio"] == twin[0]["gen"]["image_aspect_ratio"] == "pad"
    assert square[0]["gen"]["image_aspect_ratio"] == "square"
    assert [a["text"] for a in orig] == [a["text"] for a in twin]
    assert any(a["text"] for a in orig)


def _small_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    make_checkpoint(ckpt)
    (tmp_path / "img").mkdir()
    g = torch.Generator().manual_seed(1)
    qs = []
    for i in range(5):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()).save(
            tmp_path / "img" / f"{i}.png")
        qs.append({"question_id": i, "image": f"img/{i}.png", "prompt": "Describe this image ."})
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    return ["generate", "--checkpoint", str(ckpt), "--questions", str(tmp_path / "q.jsonl"), "--max-new-tokens", "6"]


@pytest.mark.parametrize("flags,match", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--max-new-tokens", "-3"], "--max-new-tokens must be at least 1, got -3"),
    (["--top-p", "0"], "--top-p in"),
])
def test_bad_flags_refused_before_any_work(tmp_path, flags, match):
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "image": "x.png", "prompt": "hi"}\n')
    with pytest.raises(SystemExit, match=match):
        ev.main(["generate", "--checkpoint", "nowhere", "--questions", str(tmp_path / "q.jsonl"), "--output",
                 str(tmp_path / "a.jsonl"), *flags])
    assert not (tmp_path / "a.jsonl").exists()


def test_empty_question_file(tmp_path):
    (tmp_path / "q.jsonl").write_text("\n")
    with pytest.raises(SystemExit, match="q.jsonl holds no questions"):
        ev.main(["generate", "--checkpoint", "nowhere", "--questions", str(tmp_path / "q.jsonl"), "--output",
                 str(tmp_path / "a.jsonl")])


def test_resume_refuses_another_checkpoint_or_settings(tmp_path):
    import shutil
    args = _small_run(tmp_path)
    out = tmp_path / "a.jsonl"
    ev.main(args + ["--output", str(out)])
    full = open(out).read()
    # a finished file is checked too: rerunning it with other settings or retrained weights must not exit 0
    # with the old answers
    with pytest.raises(SystemExit, match=r"holds answers of another run .*temperature: 0.0 -> 0.7"):
        ev.main(args + ["--temperature", "0.7", "--output", str(out)])
    shutil.copytree(tmp_path / "ckpt", tmp_path / "before")
    weights = next(p for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    assert data[-4:] != b"\x00\x00\x00\x40"
    data[-4:] = b"\x00\x00\x00\x40"  # the last float becomes 2.0: the same path, other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"holds answers of another run .*model: .*ckpt' \(fingerprint \w+\) -> "):
        ev.main(args + ["--output", str(out)])
    shutil.rmtree(tmp_path / "ckpt")
    shutil.copytree(tmp_path / "before", tmp_path / "ckpt")
    out.write_text("".join(full.splitlines(keepends=True)[:2]))  # a run stopped after two answers
    with pytest.raises(SystemExit, match=r"holds answers of another run .*max_new_tokens: 6 -> 5"):
        ev.main(args[:-1] + ["5", "--output", str(out)])
    assert len(open(out).readlines()) == 2  # nothing was added
    # the same files under another path are the same model; the batch size may change
    shutil.copytree(tmp_path / "ckpt", tmp_path / "copy")
    ev.main(["generate", "--checkpoint", str(tmp_path / "copy") + "/", *args[3:], "--batch-size", "3",
             "--output", str(out)])
    assert len(open(out).readlines()) == 5
    assert [json.loads(x)["text"] for x in open(out)] == [json.loads(x)["text"] for x in full.splitlines()]
    assert {json.loads(x)["model"] for x in open(out)} == {str(tmp_path / "ckpt")}  # one run, so it scores as one


def test_sampled_answers_resume_byte_for_byte(tmp_path):
    args = _small_run(tmp_path) + ["--temperature", "1.0", "--seed", "3"]
    full, part, single = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "single.jsonl"
    ev.main(args + ["--batch-size", "2", "--output", str(full)])
    lines = open(full).readlines()
    part.write_text(lines[0] + lines[1] + lines[2][:20])  # killed inside the third answer
    ev.main(args + ["--batch-size", "2", "--output", str(part)])
    assert open(part).read() == open(full).read()
    ev.main(args + ["--batch-size", "1", "--output", str(single)])  # another batching, the same draws per item
    assert open(single).read() == open(full).read()
    greedy = tmp_path / "greedy.jsonl"
    ev.main(_small_run(tmp_path / "g") + ["--output", str(greedy)])
    assert [json.loads(x)["text"] for x in lines] != [json.loads(x)["text"] for x in open(greedy)]  # it samples


def test_help_and_scoring_import_no_torch(tmp_path):
    """eval.py --help and a scoring command start without torch or the model code (3-5 s of imports)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, eval\n"
            "try:\n    eval.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('model.') and m != 'model.files'))")
    for argv in (["--help"], ["report", str(tmp_path)]):
        (tmp_path / "chair.json").write_text(json.dumps({"kind": "chair", "metrics": {"chair_s": 0.5}}))
        r = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == "[]", (argv, r.stdout[-300:])
