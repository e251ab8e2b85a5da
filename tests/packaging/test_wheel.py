"""The wheel is complete: built from a copy of the source (nothing written to the checkout),
installed into a fresh venv where the editable install cannot shadow it, and used from
outside the repository. The heavy dependencies (torch, transformers, ...) come from this
venv's site-packages through a .pth line in the fresh venv: a path added that way is not a
site dir, so the editable finder's .pth files there are not processed (checked below)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import kvdirect_interp

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(kvdirect_interp.__file__).resolve().parent
DATA = ["chat_20_turns.json", "patch_pairs.json", "prompts.json", "tasks.json"]
PROMPT = "Hello"


def _env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    env.update(
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONNOUSERSITE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        **extra,
    )
    return env


def _run(cmd, cwd, **extra) -> str:
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_env(**extra),
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the wheel, the fresh venv's python, a scratch folder outside the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # pip builds in place: a copy keeps build/ and egg-info out of the repo
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        SOURCE, src / "kvdirect_interp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp / "dist",
            src,
        ],
        cwd=src,
    )
    (wheel,) = (tmp / "dist").glob("kvdirect_interp-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    # installed before the .pth exists, so pip sees only this venv (never the editable one)
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        cwd=tmp,
    )
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp
        ).strip()
    )
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (site / "zz_main_venv.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return wheel, python, tmp


def test_wheel_holds_every_module_and_data_file(built):
    wheel, _, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        p.relative_to(SOURCE.parent).as_posix()
        for p in SOURCE.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert any(m.startswith("kvdirect_interp/policies/") for m in modules)
    assert modules - names == set()  # policies/*.py among them
    shipped = sorted(p.name for p in (SOURCE / "data").glob("*.json"))
    assert set(DATA) <= set(shipped)
    assert {n for n in names if n.startswith("kvdirect_interp/data/")} == {
        f"kvdirect_interp/data/{n}" for n in shipped
    }
    with zipfile.ZipFile(wheel) as z:
        for n in shipped:
            assert z.read(f"kvdirect_interp/data/{n}") == (SOURCE / "data" / n).read_bytes()


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, pin = line.split("==")
            pins[canonicalize_name(name.strip())] = pin.strip()
    return pins


def test_metadata_requires_what_the_constraints_pin(built):
    """`pip install .` asks for each dependency, filelock among them, in a range that
    admits the version pinned in requirements/constraints.txt."""
    wheel, _, _ = built
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist")
        entry_points = z.read(meta.replace("METADATA", "entry_points.txt")).decode()
    reqs = [Requirement(r) for r in requires]
    runtime = {canonicalize_name(r.name) for r in reqs if r.marker is None}
    assert "filelock" in runtime and {"torch", "transformer-lens", "xxhash"} <= runtime
    pins = _constraints()
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} has no pin in requirements/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req} does not admit the pinned {name}=={pins[name]}"
        )
    assert "kvdirect-interp = kvdirect_interp.cli:main" in entry_points


CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    venv = Path(sys.prefix).resolve()
    import torch
    import kvdirect_interp as kd
    import kvdirect_interp.policies
    from kvdirect_interp import resources
    files = [kd.__file__, kvdirect_interp.policies.__file__, resources.__file__]
    for f in files:
        assert Path(f).resolve().is_relative_to(venv), f"{f} is not inside {venv}"
    finders = [repr(m) for m in sys.meta_path if "editable" in repr(m).lower()]
    assert not finders and not any("editable" in m for m in sys.modules), finders
    assert not Path(torch.__file__).resolve().is_relative_to(venv)  # from the main venv
    names = list(kd.list_models()["name"])
    model = kd.load_model("tiny-llama")
    out = kd.generate(model, PROMPT, max_new_tokens=4, cache=kd.KVDirect(2))
    data = {n: resources.load_data(n) for n in resources.data_files()}
    print(json.dumps({"names": names, "new_tokens": out.new_tokens.tolist(),
                      "data": data, "files": files}))
""").replace("PROMPT", repr(PROMPT))


def test_installed_wheel_imports_loads_and_generates(built):
    _, python, tmp = built
    cwd = tmp / "elsewhere"
    cwd.mkdir(exist_ok=True)
    out = _run([python, "-c", CHECK], cwd=cwd, KVDIRECT_CACHE=str(tmp / "cache"))
    got = json.loads(out.strip().splitlines()[-1])
    assert got["names"] == list(kvdirect_interp.list_models()["name"])
    assert {"smollm2-135m", "tiny-llama"} <= set(got["names"])
    assert set(DATA) <= set(got["data"])
    for name in got["data"]:
        assert got["data"][name] == json.loads((SOURCE / "data" / name).read_text())
    from tests.conftest import tiny_model

    here = kvdirect_interp.generate(
        tiny_model("tiny-llama"), PROMPT, max_new_tokens=4, cache=kvdirect_interp.KVDirect(2)
    )
    assert got["new_tokens"] == here.new_tokens.tolist()  # the wheel's code = the checkout's
    assert (python.parent / "kvdirect-interp").exists()  # the console script


def test_experiments_reads_its_data_from_the_wheel(built):
    """experiments.load_data goes through the package's resources, not the checkout."""
    _, python, tmp = built
    cwd = tmp / "elsewhere"
    cwd.mkdir(exist_ok=True)
    code = (
        "from kvdirect_interp import experiments\n"
        "assert experiments.load_data('prompts.json')['prompts']\n"
        "assert len(experiments.load_data('chat_20_turns.json')['turns']) == 20\n"
    )
    _run([python, "-c", code], cwd=cwd, KVDIRECT_CACHE=str(tmp / "cache"))
