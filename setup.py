"""Package discovery: `ondevice/` is the core; `targets/` installs as the subpackage `ondevice.targets`.

Every folder under `targets/` with an `__init__.py` becomes `ondevice.targets.<name>`, so a new backend
folder is picked up without editing any core file.
"""
from setuptools import find_packages, setup

core = find_packages(include=["ondevice", "ondevice.*"])
targets = ["ondevice.targets"] + ["ondevice.targets." + p for p in find_packages("targets")]

setup(
    packages=core + targets,
    package_dir={"ondevice": "ondevice", "ondevice.targets": "targets"},
    package_data={"ondevice": ["profiles/*.toml", "bench/*.json"]},
)
