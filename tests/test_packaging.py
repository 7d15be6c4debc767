"""The wheel installs dfx_keras and nothing else: no top-level ``datasets`` package that would
overwrite Hugging Face's (and be deleted with it on uninstall), yet every module, the tfds
builder (as ``dfx_keras.datasets.dfx_corpus``) and the recipes are inside."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from dfx_keras import __version__

REPO = pathlib.Path(__file__).resolve().parents[1]
# Hugging Face's package, pinned so the check does not move with their releases.
HF_DATASETS = "datasets==5.2.0"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("dfx_keras-*.whl")
    return path


def _source_files() -> set[str]:
    """Where each shipped source file must land in the wheel."""
    expected = {f"dfx_keras/{p.relative_to(REPO / 'dfx_keras').as_posix()}"
                for pattern in ("*.py", "*.flags") for p in (REPO / "dfx_keras").rglob(pattern)}
    builder = REPO / "datasets" / "dfx_corpus"
    return expected | {f"dfx_keras/datasets/dfx_corpus/{p.name}" for p in builder.glob("*.py")}


def test_wheel_holds_only_dfx_keras_with_every_module_the_builder_and_the_recipes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {"dfx_keras", f"dfx_keras-{__version__}.dist-info"}
    missing = _source_files() - names  # setup.cfg lists the packages by hand: a new one must be added there
    assert not missing, f"not in the wheel (add the package to setup.cfg): {sorted(missing)}"
    assert {"dfx_keras/configs/demo.flags", "dfx_keras/datasets/dfx_corpus/checksums.tsv"} <= names


def _run(python, code, cwd=None, env=None):
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_beside_hugging_face_datasets_and_uninstalls_without_harming_it(wheel, tmp_path):
    """A scratch venv with Hugging Face ``datasets`` and our wheel in one site-packages.

    Packages both need (TensorFlow, pyarrow...) are borrowed from this environment through
    PYTHONPATH, which lists no ``dfx_keras`` folder (an editable install) and no ``datasets``,
    so nothing large is downloaded. pip installs ours without it, seeing only the scratch venv.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    own = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    borrowed = dict(own, PYTHONPATH=sysconfig.get_paths()["purelib"])
    assert not (pathlib.Path(borrowed["PYTHONPATH"]) / "datasets").exists()  # else the check proves nothing
    subprocess.run([*pip, "install", HF_DATASETS], check=True, env=borrowed, timeout=600)
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], check=True, env=own, timeout=300)

    theirs = "import datasets; assert callable(datasets.load_dataset), datasets.__file__; print(datasets.__file__)"
    assert str(venv) in _run(python, theirs, env=borrowed)
    ours = ("import importlib.util, os, dfx_keras, dfx_keras.configs as c; print(dfx_keras.__file__); "
            "assert importlib.util.find_spec('dfx_keras.datasets.dfx_corpus'); assert os.path.isfile(c.flagfile('demo'))")
    assert str(venv) in _run(python, ours, cwd=tmp_path, env=borrowed)
    # `python train.py` in a source checkout puts the repo root first on sys.path: its datasets/
    # folder (no __init__.py) must not shadow theirs.
    in_checkout = f"import sys; sys.path.insert(0, {str(REPO)!r}); {theirs}"
    assert str(venv) in _run(python, in_checkout, cwd=REPO, env=borrowed)

    subprocess.run([*pip, "uninstall", "-y", "dfx_keras"], check=True, env=own, timeout=300)
    assert str(venv) in _run(python, theirs, env=borrowed)
    leftovers = list(venv.glob("lib/python*/site-packages/dfx_keras*"))
    assert not leftovers, leftovers
