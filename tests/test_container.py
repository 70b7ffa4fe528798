"""Static checks of the container image recipe and of what a non-editable install ships.

The real build-and-serve check is `../shared/tools/container-smoke --pip-local --metrics-port 9090`
(podman; minutes). These catch the cheap mistakes before that: a package missing from the wheel
(an editable install hides it), CMD flags the CLI does not know, a shell-form entrypoint.
"""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from ludus_service.cli import parse_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"ludus": "client/ludus", "ludus_client": "client/ludus_client", "ludus_service": "service/ludus_service"}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instruction(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]
    assert found, f"Dockerfile has no {name}"
    return found[-1]


def test_every_python_package_is_listed_for_the_wheel():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = set()
    for top, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join((top, *rel.parts)))
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_console_scripts():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["ludus-server"] == "ludus_service.cli:main"
    assert scripts["ludus-healthcheck"] == "ludus_service.healthcheck:main"


def test_dockerfile_entrypoint_cmd_user_and_healthcheck():
    entrypoint = json.loads(_instruction("ENTRYPOINT"))  # exec form: ludus-server is PID 1 and gets SIGTERM
    assert entrypoint == ["ludus-server"]
    cmd = json.loads(_instruction("CMD"))
    args = parse_args(cmd)  # every default flag exists in ludus-server
    assert (args.host, args.port, args.checkpoint_dir, args.demo_dir) == ("0.0.0.0", 50051, "/checkpoints", "/demos")
    assert _instruction("USER") not in ("root", "0")
    assert "ludus-healthcheck" in _instruction("HEALTHCHECK")
    assert set(_instruction("EXPOSE").split()) == {"50051", "9090"}
    assert _instruction("VOLUME").split() == ["/checkpoints", "/demos"]
    assert re.search(r"\[server\]", (ROOT / "Dockerfile").read_text())
