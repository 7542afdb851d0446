"""cffi's setuptools hook is a setup() keyword, so it lives here; the rest is pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["csrc/build_shim.py:ffibuilder"])
