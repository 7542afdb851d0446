# rdmapin: the two commands a fresh machine needs are `make demo` and `make test`; each does all
# set-up (Debian packages, the venv, the guest kernel) idempotently and reuses its caches.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON := /usr/bin/python3
STAMP := $(VENV)/.rdmapin-installed

.PHONY: setup deps venv kernel test demo lint bench dist wheelhouse clean

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

# The guest's wheel test installs what `make dist` built.
test: setup dist
	@ci/test

demo: setup
	@ci/vm/run --dimm 512M -- ci/demo

bench: setup
	@ci/vm/run --memory 3G --hugepages 600 -- python benchmarks/reg_cost.py

# An sdist and a wheel with PyPI's build (isolated: setuptools, wheel and cffi from PyPI), then
# the wheels a --no-deps install needs in a guest with no network (numpy, cffi) beside them.
dist: venv
	@rm -rf dist build
	$(PY) -m build --outdir dist . >dist.log 2>&1 || { tail -n 30 dist.log; exit 1; }
	@rm -f dist.log
	@ls dist

wheelhouse: venv
	@mkdir -p dist/wheelhouse
	$(PY) -m pip download -q --disable-pip-version-check -c ci/constraints.txt --only-binary=:all: \
		-d dist/wheelhouse numpy cffi pycparser

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf results build dist *.egg-info rdmapin/_verbs*.so
