"""eval.py generate: a tiny random Llava + a word-level tokenizer saved as a checkpoint; batched greedy answers,
question fields carried over, and a killed run (answers partly written, last line truncated) resumed exactly."""
import json

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

import eval as ev
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
                            "seed": 0, "dtype": "float32"}
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
