"""Packaging: setup.cfg declares every package the code imports, as compatible ranges (no ==
pins), for the Python versions TensorFlow supports; constraints.txt pins one tested point inside
those ranges, and the scripts and CI install from it."""

import ast
import configparser
import importlib.metadata
import re
import sys

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.test_case import REPO_ROOT

PACKAGES = ("tfbrain", "tfrecords_tools", "serving")
# import name -> distribution, for optional packages this environment may not have installed
NOT_INSTALLED_DISTRIBUTIONS = {"apache_beam": "apache-beam", "torch": "torch", "matplotlib": "matplotlib",
                               "tomli": "tomli", "safetensors": "safetensors"}
# CI's Python (.ci/run): the environment markers constraints.txt is resolved for
CI_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.0"}


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    return parser


def requirement_lines(text: str) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return [Requirement(line) for line in lines if line]


def install_requires() -> list[Requirement]:
    return requirement_lines(setup_cfg()["options"]["install_requires"])


def extras() -> dict[str, list[Requirement]]:
    section = setup_cfg()["options.extras_require"]
    return {name: requirement_lines(section[name]) for name in section}


def declared_names() -> set[str]:
    requirements = install_requires() + [r for reqs in extras().values() for r in reqs]
    return {canonicalize_name(r.name) for r in requirements}


def imported_top_level_modules() -> dict[str, str]:
    """{top-level module: first file importing it} over the three packages (ast, no import)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO_ROOT)))
    return found


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact `name==version` pin"
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def test_every_imported_package_is_declared():
    own = set(PACKAGES)
    distributions = importlib.metadata.packages_distributions()
    undeclared = []
    for module, where in sorted(imported_top_level_modules().items()):
        if module in own or module in sys.stdlib_module_names or module == "__future__":
            continue
        candidates = distributions.get(module) or [NOT_INSTALLED_DISTRIBUTIONS.get(module, module)]
        if not {canonicalize_name(c) for c in candidates} & declared_names():
            undeclared.append(f"{module} (imported in {where}; distributions {candidates})")
    assert undeclared == [], "imported but not declared in setup.cfg: " + "; ".join(undeclared)


def test_requirements_are_ranges_not_pins():
    for requirement in install_requires() + [r for reqs in extras().values() for r in reqs]:
        operators = {spec.operator for spec in requirement.specifier}
        assert "==" not in operators and "===" not in operators, (
            f"setup.cfg pins {requirement}; pins belong in constraints.txt")
        assert requirement.specifier, f"setup.cfg: {requirement.name} has no version range"


def test_tensorflow_family_moves_together():
    by_name = {canonicalize_name(r.name): r for r in install_requires()}
    family = ["tensorflow", "tensorboard", "tensorflow-serving-api"]
    specs = {name: str(by_name[name].specifier) for name in family}
    assert len(set(specs.values())) == 1, f"one minor-version range for all of {specs}"


def test_python_requires_spans_what_tensorflow_supports():
    python_requires = SpecifierSet(setup_cfg()["options"]["python_requires"])
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert python_requires.contains(version), f"python_requires {python_requires} leaves out {version}"
    assert not python_requires.contains("3.14"), "TensorFlow 2.21 has no Python 3.14 wheels"
    assert python_requires.contains(".".join(map(str, sys.version_info[:3])))


def test_constraints_pin_a_point_inside_every_range():
    pins = constraints()
    problems = []
    for requirement in install_requires() + [r for reqs in extras().values() for r in reqs]:
        if requirement.marker and not requirement.marker.evaluate(CI_PYTHON):
            continue  # e.g. tomli, for Python 3.10 only
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{name} is not pinned")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside setup.cfg's {requirement.specifier}")
    assert problems == [], "constraints.txt: " + "; ".join(problems)


def test_scripts_and_ci_install_the_tested_set_with_every_extra():
    setup_venv = (REPO_ROOT / "scripts" / "setup_venv.sh").read_text()
    assert 'CONSTRAINTS="${CONSTRAINTS-constraints.txt}"' in setup_venv
    assert '-c "$CONSTRAINTS"' in setup_venv
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    match = re.search(r"EXTRAS=([\w,]+) bash scripts/test.sh", ci)
    assert match, ".ci/run must run scripts/test.sh with EXTRAS=..."
    installed = set(match.group(1).split(","))
    covered = {canonicalize_name(r.name) for extra in installed for r in extras()[extra]}
    for extra, requirements in extras().items():
        missing = [r.name for r in requirements if canonicalize_name(r.name) not in covered]
        assert extra in installed or not missing, f".ci/run does not install extra {extra!r} ({missing})"
    assert "TFBRAIN_REQUIRE_EXTRAS=1" in ci  # an extra's tests fail in CI instead of skipping
