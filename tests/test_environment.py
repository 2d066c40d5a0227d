"""The conda route (environment.yml) installs the same packages as the pip route (pyproject.toml)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_name(requirement: str) -> str:
    """'torch>=2.2' -> 'torch', 'opencv-python-headless' -> 'opencv-python-headless' (PEP 503 normalized)."""
    name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_route = {package_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}

    conda_route = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:") :].splitlines():
        item = line.split("#")[0].strip()
        if not item.startswith("- ") or item.endswith(":"):
            continue
        name = item[2:].strip()
        if name.startswith("-e") or name.split("=")[0] in {"python", "pip"}:
            continue
        conda_route.add(package_name(name))

    assert conda_route == pip_route, (
        f"only in environment.yml: {sorted(conda_route - pip_route)}; only in pyproject.toml: {sorted(pip_route - conda_route)}"
    )


def test_environment_yml_pins_torch_like_the_readme():
    readme = (ROOT / "README.md").read_text()
    env = (ROOT / "environment.yml").read_text()
    for pin in re.findall(r"(torch(?:vision)?==[\d.]+)", readme):
        assert pin in env, f"README installs {pin} but environment.yml does not"
