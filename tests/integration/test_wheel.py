"""The wheel is the product: built from a copy of the source tree, installed into a fresh
virtualenv, its ``backline-relay`` initialises a relay and serves the console from the
assets the wheel carries.

Offline and quick: the wheel is built without build isolation (the pinned setuptools of
the project's .venv is the backend) and installed with ``--no-deps``; the new
virtualenv sees the project's dependencies through a ``.pth`` line naming the .venv's
site-packages. A path in a ``.pth`` file is only appended to ``sys.path``, so the .pth
files *there* (the editable install's finder, which maps ``backline`` onto the source
tree) do not run: ``backline`` itself can only come from the wheel, which the test
checks before it starts the relay.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.harness import RelayProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: The top-level folders and the names they install under (pyproject.toml's package-dir).
PACKAGES = {"common": "backline/common", "agent": "backline/agent",
            "relay": "backline/relay"}
DIST = ROOT / "console" / "dist"


def _copy_source(to: Path) -> Path:
    """What a build reads, without the checkout's caches, virtualenvs and npm tree (the
    build writes build/ and *.egg-info next to its source: not into the checkout)."""
    src = to / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for folder in (*PACKAGES, "console"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    return src


def _run(*args: str | Path, timeout: float = 180) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, cwd="/")
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert (DIST / "index.html").is_file(), "console/dist is not built: run scripts/setup"
    work = tmp_path_factory.mktemp("wheel")
    src = _copy_source(work)
    out = work / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
         "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src)
    wheels = list(out.glob("backline-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_module_and_the_console(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, installed in PACKAGES.items()
                for path in (ROOT / folder).rglob("*.py")
                if "__pycache__" not in path.parts}
    assert len(expected) > 50
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel (a folder without __init__.py?): {missing}"
    assets = {f"backline/console/dist/{p.relative_to(DIST).as_posix()}"
              for p in DIST.rglob("*") if p.is_file()}
    assert "backline/console/dist/index.html" in assets
    assert assets <= names, f"console assets missing: {sorted(assets - names)}"
    assert "backline/agent/knowledge/" in {n[:len("backline/agent/knowledge/")] for n in names}
    # the co-browse recorder, bundled by scripts/setup (no fetch at run time)
    assert {"backline/agent/cobrowse/assets/rrweb-record.js",
            "backline/agent/cobrowse/assets/inject.js"} <= names
    library = {f"backline/relay/{p.relative_to(ROOT / 'relay').as_posix()}"
               for p in (ROOT / "relay" / "fixes" / "library").rglob("*") if p.is_file()}
    assert library and library <= names, f"fix library missing: {sorted(library - names)[:9]}"
    strays = sorted(n for n in names if not n.startswith(("backline/", "backline-"))
                    or "node_modules" in n or n.startswith("backline/console/src"))
    assert not strays, f"the wheel carries what it should not: {strays[:20]}"


def _fresh_venv(where: Path, wheel: Path) -> Path:
    """A virtualenv with the wheel installed and the .venv's dependencies visible."""
    _run(sys.executable, "-m", "venv", "--without-pip", where)
    python = where / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q",
         "--disable-pip-version-check", "--no-deps", "--no-index", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_backline_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_the_installed_relay_serves_the_console(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = _fresh_venv(venv, wheel)
    where = _run(python, "-c",
                 "import backline.relay, backline.relay.net.server, backline.agent.cli,"
                 " backline.console, importlib.resources as r;"
                 " print(backline.relay.__file__); print(backline.agent.cli.__file__);"
                 " print(r.files('backline.console') / 'dist')").split()
    for path in where:
        assert Path(path).is_relative_to(venv), f"backline came from {path}, not the wheel"
    exe = venv / "bin" / "backline-relay"
    assert exe.read_text().splitlines()[0] == f"#!{python}"

    relay = RelayProcess(tmp_path, exe=str(exe))
    relay.env.pop("PYTHONPATH", None)
    relay.cli("init")
    relay.start()
    try:
        with httpx.Client(base_url=relay.url, verify=relay.tls(), timeout=10) as client:
            index = client.get("/")
            assert index.status_code == 200, index.text[:500]
            assert index.content == (DIST / "index.html").read_bytes()
            linked = re.findall(r'(?:src|href)="(/assets/[^"]+)"', index.text)
            assert linked, f"index.html links no asset: {index.text[:500]}"
            for path in linked:
                asset = client.get(path)
                assert asset.status_code == 200, path
                assert asset.content == (DIST / path.lstrip("/")).read_bytes(), path
    finally:
        relay.stop()
