"""Only the package list lives here: every vmxdbg* package found on disk, plus
vmxdbg._structs, which pyproject.toml maps to the structs/ folder (YAML data) and
which package discovery cannot find by scanning. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["vmxdbg", "vmxdbg.*"]) + ["vmxdbg._structs"])
