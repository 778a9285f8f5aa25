# make test : create .venv (pinned), then the test suite; first test-compat (the export under transformers 4.x).
# make demo : create .venv, then run the toy-world pipeline (see README); make demo-seeds: it for three SFT seeds.
PY      := .venv/bin/python
RUNTIME := .venv/.runtime
STAMP   := .venv/.installed

.PHONY: test test-compat demo demo-quick demo-seeds bench bench-fused rehearsal rehearsal-mobilevlm clean-venv

# the runtime packages alone: all the demo needs
$(RUNTIME): requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and alone: the pin resolves to the local CPU wheel, nothing pulls CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	touch $(RUNTIME)

# + the test-only ones (pytest, transformers as the parity reference, triton for the kernel's interpreter tests)
$(STAMP): $(RUNTIME) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

# the real LLaMA and CLIP tokenizers, rebuilt once from registry packages (rehearsal/assets.py; tests use them)
ASSETS  := .venv/assets/.built
$(ASSETS): $(RUNTIME) rehearsal/assets.py
	$(PY) -m rehearsal.assets --out .venv/assets
	touch $(ASSETS)

# the export again under the last transformers 4.x (environments still on 4.x, many vLLM installs), own venv
COMPAT  := .venv-compat/.installed
$(COMPAT): requirements-compat.txt
	test -x .venv-compat/bin/python || python3 -m venv .venv-compat
	.venv-compat/bin/python -m pip install -q --upgrade pip
	.venv-compat/bin/python -m pip install -q torch==2.13.0
	.venv-compat/bin/python -m pip install -q -r requirements-compat.txt
	touch $(COMPAT)

test-compat: $(COMPAT) $(ASSETS)
	.venv-compat/bin/python -m pytest -q -p no:cacheprovider tests/test_export.py

# test-compat first, so that the whole suite's summary is the last line
test: $(STAMP) $(ASSETS)
	$(MAKE) --no-print-directory test-compat
	$(PY) -m pytest -q tests

# the README's real recipe on real-shape inputs (LLaVA-1.5-7B's config with 2 layers), on the CPU: rehearsal/run.py
rehearsal: $(STAMP) $(ASSETS)
	$(PY) -m rehearsal.run --out out/rehearsal

# the same README blocks on mtgv/MobileVLM_V2-1.7B's full shape (24 layers, 1.7 B parameters, the hub's file layout),
# one process per torchrun command (two 1.7 B fp32 copies would not leave room on a 24 GiB machine)
rehearsal-mobilevlm: $(STAMP) $(ASSETS)
	$(PY) -m rehearsal.run --out out/rehearsal_mobilevlm --model mobilevlm --ngpu 1 --no-fsdp

demo: $(RUNTIME)
	$(PY) -m toy.demo

demo-quick: $(RUNTIME)
	$(PY) -m toy.demo --quick

# the same pipeline for SFT seeds 0, 1 and 2, and the mean and spread over them (docs/toy.md's table)
demo-seeds: $(RUNTIME)
	$(PY) -m toy.seeds

# the CPU benchmarks of the README, each ours vs the obvious alternative in one run (about 5 minutes)
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/logprob.py --repeats 3
	$(PY) bench/train_step.py --threads 1
	$(PY) bench/train_step.py --threads 1 --vocab 32000 --repeats 3
	$(PY) bench/generate.py

# the fused preference loss vs naive and vs sequence_logprobs + loss, then one DPO step vs TRL (docs/fused_loss.md)
bench-fused: $(STAMP) requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt -c constraints.txt
	$(PY) bench/preference_loss.py --check
	$(PY) bench/trl_step.py

clean-venv:
	rm -rf .venv .venv-compat
