"""train.py's own loop, end to end, DPO and POVID, this tree against an earlier commit's: `bench/train_step.py --loop`.

    .venv/bin/python bench/train_step.py --loop --before 624af90                    # CPU: the toy LLaVA
    flock /work/heavy.lock .venv/bin/python bench/train_step.py --loop --preset 7b-2l --before 624af90
    python3 bench/train_step.py --loop --device cuda --preset 7b                    # GPU: LLaVA-1.5-7B shape, MFU

Unlike the variants of bench/train_step.py (one step written out here), this runs `train.main` itself: images read
from disk (640 x 480 JPEGs, COCO's size), decoded, padded, normalised, POVID's noise on the full-resolution image,
collation, the reference, the policy, the optimizer. --before REV runs the same command on REV's tree (git archive
into a temporary directory; 624af90 = main before issue 32 items 8-11: data on the training thread, a host sync per
step, the tower 4-6 times per pair). "after, data inline" is this tree with the batches made on the training thread
when the step asks (no Prefetch thread): the data's share of the step, apart from the other items. Each run is its
own subprocess; a random init from a config dir (--model_config, no checkpoint file): toy = the toy world's LLaVA,
7b-2l = LLaVA-1.5-7B's widths with 2 decoder and 2 tower layers, 7b = the whole shape. Step time = (end of the
last step, after the device is done) - (end of the warm-up steps), over the measured steps; on CUDA also the peak
memory and the MFU train.py logs (Run.mfu).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# runs inside the subprocess, from the tree being measured (its train.py)
DRIVER = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
import train
warm, inline, args = int(sys.argv[2]), sys.argv[3] == "inline", sys.argv[4:]
class Inline:  # the batches made on the training thread, when asked for: the data-loading cost left in the step
    def __init__(self, make, *a, **k): self.make = make
    def get(self, step): return self.make(step)
    def __enter__(self): return self
    def __exit__(self, *exc): pass
if inline:
    train.D.Prefetch = Inline
cuda = torch.cuda.is_available() and "--device=cpu" not in args
sync = torch.cuda.synchronize if cuda else (lambda: None)
marks, work, runs = {}, {}, []
real_step, real_save, real_setup = train.Run.step, train.save_checkpoint, train.Run.setup
def step(self, s):
    out = real_step(self, s)
    if s == warm - 1:
        sync(); marks["t0"] = time.perf_counter()
        if cuda: torch.cuda.reset_peak_memory_stats()
    elif s >= warm:
        for k, v in out["work"].items(): work[k] = work.get(k, 0.0) + v
    return out
def save(*a, **k):
    if "t1" not in marks: sync(); marks["t1"] = time.perf_counter()
    return real_save(*a, **k)
def setup(self):
    runs.append(self); return real_setup(self)
train.Run.step, train.save_checkpoint, train.Run.setup = step, save, setup
train.main(args)
run = runs[0]
n = run.cfg.max_steps - warm
sec = (marks["t1"] - marks["t0"]) / n
print(json.dumps({"step_s": sec, "mfu": run.mfu(work, sec * n), "steps": n,
                  "peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}))
"""


def tree_of(rev: str) -> str:
    """REV's files (git archive) in a temporary directory."""
    d = tempfile.mkdtemp(prefix=f"povid_{rev}_")
    tar = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as t:
        t.extractall(d, filter="data")
    return d


def photo(path: str, seed: int):
    """A 640 x 480 JPEG with a photo's cost to decode (smooth gradients, shapes, grain), not a flat colour."""
    import numpy as np
    from PIL import Image, ImageDraw
    r = random.Random(seed)
    y, x = np.mgrid[0:480, 0:640] / 640.0
    base = np.stack([(np.sin(x * r.uniform(2, 9) + c) + 1) * 120 + y * r.uniform(0, 60) for c in range(3)], -1)
    img = Image.fromarray(np.clip(base + np.random.default_rng(seed).normal(0, 8, base.shape), 0, 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = r.randrange(600), r.randrange(440)
        d.ellipse([x0, y0, x0 + r.randrange(20, 200), y0 + r.randrange(20, 200)],
                  fill=tuple(r.randrange(256) for _ in range(3)))
    img.save(path, quality=90)


def make_assets(d: str, preset: str, n: int = 16):
    """(train.py args for the model, data path): a config dir, its tokenizer, and n preference pairs on photos."""
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        photo(os.path.join(d, f"img{i}.jpg"), i)
    if preset == "toy":  # the toy world's vocabulary: its own answers and rule-injected hallucinations
        import hallucinate
        from toy import world as toyworld
        toyworld.build_world(os.path.join(d, "w"), n_train=n, n_test=1, seed=1)
        assert hallucinate.main(["rules", "--input", f"{d}/w/train.json", "--annotations", f"{d}/w/annotations.json",
                                 "--vocab", f"{d}/w/vocab.json", "--output", f"{d}/rules.jsonl"]) == 0
        rows = [json.loads(x) for x in open(f"{d}/rules.jsonl")][:n]
        model = [f"--model_config={d}/w/llava_config", f"--tokenizer={d}/w"]
    else:
        from rehearsal.assets import llama_tokenizer_dir
        from rehearsal.checkpoints import LLAVA_HF_7B_CONFIG, llava_config
        os.makedirs(f"{d}/config", exist_ok=True)
        with open(f"{d}/config/config.json", "w") as f:  # llava-1.5-7b-hf's config.json (2 layers each for 7b-2l)
            json.dump(llava_config(layers=2) if preset == "7b-2l" else LLAVA_HF_7B_CONFIG, f)
        r = random.Random(0)
        words = ("a red cup", "two dogs", "a wooden table", "a man in a blue shirt", "a plate of food", "a window",
                 "a green car", "three chairs", "a small cat", "a lamp")
        rows = []
        for i in range(n):
            chosen = " ".join(f"There is {r.choice(words)} next to {r.choice(words)}." for _ in range(8))
            rows.append({"prompt": "<image>\nDescribe this image in detail.", "chosen": chosen,
                         "rejected": chosen.replace("next to", "behind", 3)})
        model = [f"--model_config={d}/config", f"--tokenizer={llama_tokenizer_dir()}"]
    with open(f"{d}/pairs.jsonl", "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": f"p{i}", "image": f"img{i}.jpg", "prompt": row["prompt"],
                                "chosen": row["chosen"], "rejected": row["rejected"]}) + "\n")
    return model, f"{d}/pairs.jsonl"


def main(a):
    """a: bench/train_step.py's parsed flags (device, preset, pairs, rank, grad_checkpointing, threads, repeats,
    before, rounds, modes)."""
    cuda = a.device == "cuda"
    preset = a.preset or ("7b" if cuda else "toy")
    warm, steps = 1, max(a.repeats, 2)
    with tempfile.TemporaryDirectory() as d:
        model, data = make_assets(d, preset)
        trees = {"after": (ROOT, "thread"), "after, data inline": (ROOT, "inline")}
        trees |= {f"before ({a.before})": (tree_of(a.before), "-")} if a.before else {}
        runs = {}
        plan = [(m, name, tree, how) for _ in range(a.rounds) for m in a.modes.split(",")
                for name, (tree, how) in trees.items()]
        for mode, name, tree, data_thread in plan:  # the rounds interleaved: the machine's drift shared by all
            out = os.path.join(d, f"out_{mode}_{sum(map(len, runs.values()))}")
            args = [f"--mode={mode}", f"--data={data}", *model, f"--out_dir={out}", f"--lora_rank={a.rank}",
                    f"--batch_size={a.pairs}", f"--micro_batch_size={a.pairs}", f"--max_steps={warm + steps}",
                    f"--stop_after={warm + steps}", "--log_every=1000", "--ref_cache=False",
                    f"--grad_checkpointing={a.grad_checkpointing}", f"--device={a.device}"]
            args += ["--noise_tokens_from=each"] if mode == "povid" else []
            env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS=str(a.threads))
            r = subprocess.run([sys.executable, "-c", DRIVER, tree, str(warm), data_thread, *args], cwd=tree,
                               env=env, capture_output=True, text=True)
            if r.returncode:
                print(f"{mode} {name}: failed\n{r.stderr[-3000:]}", file=sys.stderr)
                continue
            runs.setdefault((mode, name), []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    rows = []
    for (mode, name), got in runs.items():  # the median run of each
        got.sort(key=lambda x: x["step_s"])
        rows.append({"mode": mode, "tree": name, **got[len(got) // 2], "range": (got[0]["step_s"], got[-1]["step_s"])})
    print(f"train.py's loop: {preset}, {a.pairs} pair(s) per step, LoRA r{a.rank}, {a.device}"
          f"{'' if cuda else ', %d thread(s)' % a.threads}, {steps} steps after {warm} warm-up, POVID noise from each;"
          f" median of {a.rounds} interleaved round(s)")
    print("| mode | tree | step s | range | vs before |" + (" peak MiB | MFU |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|---|" if cuda else ""))
    for r in rows:
        base = next((x for x in rows if x["mode"] == r["mode"] and x["tree"].startswith("before")), None)
        ratio = f"{r['step_s'] / base['step_s']:.2f}x" if base else "-"
        extra = f" {r['peak_mb']:.0f} | {100 * r['mfu']:.1f}% |" if cuda and r["mfu"] else (" - | - |" if cuda else "")
        print(f"| {r['mode']} | {r['tree']} | {r['step_s']:.3f} | {r['range'][0]:.3f}-{r['range'][1]:.3f} | {ratio} |"
              f"{extra}")
    return rows
