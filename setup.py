"""Packaging that pyproject.toml cannot say: the top-level `sql/` folder (the views' source,
kept where users read it) is shipped inside the package as `wpipe/sql/`, in wheels, sdists and
editable installs alike; `wpipe.views` finds it through package resources."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("pipeline"), "wpipe.sql"],
    package_dir={"": "pipeline", "wpipe.sql": "sql"},
)
