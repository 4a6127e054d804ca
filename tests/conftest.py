"""Shared fixtures. Data fixtures (prefix ``data_``) build tiny datasets once per session."""

import os

import pytest

import d2_detr  # noqa: F401  (compat before detectron2)
from benchmarks.common import load_script, load_synthetic  # noqa: F401  (tests import it here)
from d2_detr.data.conversion import convert_concrete_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_sample_raw():
    """The bundled real sample in the raw layout (2 images: 00044 rebar+spall, 01015 crack)."""
    return os.path.join(REPO, "datasets", "concrete_defects_sample")


@pytest.fixture(scope="session")
def data_synthetic_raw(tmp_path_factory):
    """16 synthetic 96x80 images in the raw layout (seed 0)."""
    out = tmp_path_factory.mktemp("data_synthetic") / "raw"
    load_synthetic().make_synthetic_concrete(out, 16, seed=0, size=(96, 80))
    return str(out)


@pytest.fixture(scope="session")
def data_synthetic_root(data_synthetic_raw, tmp_path_factory):
    """``data_synthetic_raw`` converted (train/val/test), read-only for tests."""
    out = tmp_path_factory.mktemp("data_synthetic_converted") / "synthetic_concrete"
    convert_concrete_dataset(
        data_synthetic_raw, out, val_fraction=0.25, test_fraction=0.125, workers=1, progress=False
    )
    return str(out)


@pytest.fixture(scope="session")
def data_cli():
    """Load a script of ``datasets/`` as a module (its ``main(argv)`` returns the exit status)."""

    def load(name):
        return load_script(f"_cli_{name}", os.path.join(REPO, "datasets", name + ".py"))

    return load
