"""Packaging for mrcnn_nb, driven by settings.ini (nbdev 2 layout): one place for the version,
the requirements and the console script."""
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.sdist import sdist as _sdist

here = Path(__file__).parent


class sdist(_sdist):
    "The source distribution carries settings.ini, which this setup.py reads (the tests and notebooks stay out)."
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        self.copy_file(str(here / "settings.ini"), str(Path(base_dir) / "settings.ini"))

cfg = ConfigParser(delimiters=["="])
cfg.read(here / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

for key in ("lib_name", "version", "description", "min_python", "author", "author_email"):
    if not cfg.get(key):
        raise SystemExit(f"settings.ini: missing required key {key!r}")

licenses = {"apache2": "Apache-2.0"}
if cfg.get("license", "apache2") not in licenses:
    raise SystemExit(f"settings.ini: unsupported license {cfg.get('license')!r}; known: {sorted(licenses)}")
py_versions = ["3.10", "3.11", "3.12", "3.13"]
min_py = cfg["min_python"]

readme = here / "README.md"
setuptools.setup(
    name=cfg["lib_name"].replace("_", "-"),
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=licenses[cfg.get("license", "apache2")],
    keywords=cfg.get("keywords", "").split(),
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Natural Language :: English",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ] + [f"Programming Language :: Python :: {v}" for v in py_versions[py_versions.index(min_py):]],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    install_requires=cfg.get("requirements", "").split(),
    extras_require={"dev": cfg.get("dev_requirements", "").split()},
    python_requires=f">={min_py}",
    zip_safe=False,
    cmdclass={"sdist": sdist},
    entry_points={
        "console_scripts": cfg.get("console_scripts", "").split(),
        "nbdev": [f"{cfg['lib_name']}={cfg['lib_name']}._modidx:d"],
    },
)
