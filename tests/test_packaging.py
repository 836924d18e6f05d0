"""The distribution as a user gets it: the sdist and the wheel built from this checkout, and
installed into a fresh virtual environment; an editable install a type checker can follow.
No network: the build runs without isolation (setuptools and wheel come with the test extra)
and installs take no dependencies."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from guards import guard

import governor

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", "LICENSE", "governor", "runner", "policies")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the distribution ships: builds write beside their sources, and two test
    runs at once must not build in the same checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    return source


@pytest.fixture(scope="module")
def built(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), built from the copy."""
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out)]
    done = subprocess.run([*build, str(source)], capture_output=True, text=True, timeout=guard(300))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return sdist, wheel


def _fresh_venv(where: Path) -> Path:
    venv.create(where, with_pip=True)
    return where / "bin"


def test_the_wheel_says_what_it_is_and_installs_in_a_fresh_venv(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, wheel = built
    assert wheel.name.startswith(f"resource_governor-{governor.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(metadata))
    assert meta["Name"] == "resource-governor" and meta["Version"] == governor.__version__
    assert meta["License-Expression"] == "MIT" and "LICENSE" in meta.get_all("License-File", [])
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    for package in ("governor", "runner", "policies"):
        assert f"{package}/py.typed" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    bin_dir = _fresh_venv(tmp_path / "venv")
    install = [str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=guard(300))
    version = subprocess.run(
        [str(bin_dir / "governor"), "--version"], capture_output=True, text=True, timeout=guard(60)
    )
    assert version.stdout.strip() == f"governor {governor.__version__}"
    imported = subprocess.run(
        [str(bin_dir / "python"), "-c", "import governor, runner, policies; print(governor.__file__)"],
        capture_output=True, text=True, timeout=guard(60), cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert str(tmp_path / "venv") in imported.stdout  # the installed copy, not this checkout


def test_the_sdist_carries_the_license_readme_and_sources(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "governor/__init__.py", "runner/py.typed"} <= names


def test_an_editable_install_is_a_path_a_type_checker_follows(source: Path, tmp_path: Path) -> None:
    """Attack: the flat layout's editable install was an import hook, which mypy cannot
    follow ("Cannot find implementation or library stub for module named governor")."""
    # The editable wheel, built as pip builds it (PEP 660), by this environment's setuptools.
    build = (
        "from build import ProjectBuilder; "
        f"print(ProjectBuilder({str(source)!r}).build('editable', {str(tmp_path)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, timeout=guard(300))
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = done.stdout.strip().splitlines()[-1]
    bin_dir = _fresh_venv(tmp_path / "venv")
    install = [str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel]
    subprocess.run(install, check=True, capture_output=True, timeout=guard(300))
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    [pth] = site.glob("__editable__.resource_governor-*.pth")
    assert pth.read_text().strip() == str(source)  # a plain path entry
    assert not list(site.glob("__editable___*_finder.py"))
