"""constraints.txt (the versions behind the README's figures) stays in step with pyproject.toml."""

import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject_requirements() -> list[Requirement]:
  """The dependencies and the test/parity extras (no TOML parser on Python 3.10's stdlib: the
  lists are the quoted strings inside ``dependencies = [...]``, ``test = [...]``, ...)."""
  text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
  found = []
  for key in ("dependencies", "test", "parity"):
    block = re.search(rf"^{key} = \[(.*?)\]", text, re.S | re.M)
    assert block, f"pyproject.toml has no {key} list"
    found += [Requirement(s) for s in re.findall(r'"([^"]+)"', block.group(1))]
  return found


def _pins() -> dict[str, Version]:
  pins = {}
  for line in open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8"):
    line = line.split("#")[0].strip()
    if line:
      name, version = line.split("==")
      pins[canonicalize_name(name)] = Version(version)
  return pins


def test_every_dependency_is_pinned_within_its_range():
  pins = _pins()
  assert len(pins) > 50  # the whole environment, not only the direct dependencies
  for req in _pyproject_requirements():
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is not in constraints.txt"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}")
