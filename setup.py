"""The package list, computed: every folder with an ``__init__.py`` under the top-level
folders that install as the ``backline`` namespace (the mapping is ``package-dir`` in
pyproject.toml, where everything else about the distribution is declared).

Why a setup.py: setuptools' ``packages.find`` names packages after their folders, and
ours install under other names (``relay/net`` is ``backline.relay.net``), so a new
sub-package would otherwise have to be added to a hand-kept list, and a forgotten one
is missing only from the wheel, never from a source checkout. tests/integration/
test_wheel.py checks that the wheel holds every module and the console's assets.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
#: Packages of data only, whose folders are searched no deeper: the console's holds its
#: npm tree too (console/node_modules), where some tools carry Python files of their own.
DATA_ONLY = {"backline.console"}


def backline_packages() -> list[str]:
    """Each mapped package and its sub-packages, under their installed names."""
    config = tomllib.loads((HERE / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    packages: list[str] = []
    for name, folder in sorted(package_dir.items()):
        packages.append(name)
        if name not in DATA_ONLY:
            packages += [f"{name}.{sub}" for sub in find_packages(str(HERE / folder))]
    return packages


setup(packages=backline_packages())
