"""Package mapping: operator/ and engine/ install as deepserve.operator and deepserve.engine.

`deepserve` is a namespace package and `operator/` has no ``__init__.py`` so that the
repository root on ``sys.path`` can never shadow the standard library's ``operator``.
"""

from setuptools import find_packages, setup

packages: list[str] = []
package_dir: dict[str, str] = {}
for name in ("operator", "engine"):
    packages.append(f"deepserve.{name}")
    package_dir[f"deepserve.{name}"] = name
    for sub in find_packages(name):
        packages.append(f"deepserve.{name}.{sub}")

setup(packages=packages, package_dir=package_dir)
