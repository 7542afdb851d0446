# rdmapin: the two commands a fresh machine needs are `make demo` and `make test`; each does all
# set-up (Debian packages, the venv, the guest kernel) idempotently and reuses its caches.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON := /usr/bin/python3
STAMP := $(VENV)/.rdmapin-installed

.PHONY: setup deps venv kernel test demo lint bench clean

setup: deps venv kernel

deps:
	@ci/install-deps

# pyverbs and bcc exist only as Debian packages for /usr/bin/python3, hence system-site-packages.
$(STAMP): pyproject.toml setup.py ci/constraints.txt $(wildcard csrc/*.c csrc/*.h csrc/*.py) | deps
	@test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c ci/constraints.txt -e '.[test,tools]'
	@touch $@

venv: $(STAMP)

kernel: | deps
	@. ci/vm/kernel.env && for k in $$KERNELS; do ci/vm/fetch-kernel $$k >/dev/null || exit 1; done

test: setup
	@ci/test

demo: setup
	@ci/vm/run --dimm 512M -- ci/demo

bench: setup
	@ci/vm/run --memory 3G --hugepages 600 -- python benchmarks/reg_cost.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf results build *.egg-info rdmapin/_verbs*.so
