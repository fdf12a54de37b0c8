# stovtal — every target runs inside .venv, created on first use.
PY      := .venv/bin/python
VENV    := .venv/.installed
VIDEOS  ?= videos
STORE   ?= features.zarr
MODEL   ?= ViT-B-16
PRETRAINED ?=
ARGS    ?=
OUT     ?= demo_out
SEED    ?= 0

.PHONY: install test extract bench bench-gpu demo study selftrain clean

install: $(VENV)

$(VENV): setup.cfg setup.py
	python3 -m venv .venv
	$(PY) -m pip install --upgrade pip
	# The pinned torch pair; on the dev machines pip takes them from local disk.
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	touch $(VENV)

test: $(VENV)
	$(PY) -m pytest -q tests

# --pretrained only when set: tal-extract's own default is openai, and ViCLIP takes weights only from --checkpoint.
extract: $(VENV)
	.venv/bin/tal-extract videos $(VIDEOS) --store $(STORE) --model $(MODEL) $(if $(PRETRAINED),--pretrained $(PRETRAINED)) $(ARGS)

bench: $(VENV)
	$(PY) tools/bench_store.py
	$(PY) tools/bench_extract.py --quick   # the full run takes about an hour on a 2-core CPU
	$(PY) tools/bench_eval.py
	$(PY) tools/bench_train.py
	$(PY) tools/bench_pseudo.py
	$(PY) tools/bench_rerank.py
	$(PY) tools/bench_batching.py --map   # length-aware batches: epoch time and mAP (~1 hour)
	$(PY) tools/bench_stage2.py           # simulates 10,000 web videos once (~30 min)

bench-gpu: $(VENV)
	$(PY) tools/bench_gpu.py --out bench_gpu.json   # needs CUDA; see tools/bench_gpu_bundle.sh for a bare GPU machine

demo: $(VENV)
	$(PY) -m tal.demo --out $(OUT) --seed $(SEED)

study: $(VENV)
	$(PY) -m tal.study --out study_out --jobs 2

selftrain: $(VENV)
	.venv/bin/tal-selftrain $(ARGS)

clean:
	rm -rf demo_out study_out .pytest_cache
