import sys

import pytest
import tensorflow_datasets as tfds

from sandbox import dataset
from sandbox import generate as gen
from sandbox.spec import SPLITS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    dataset.build(data_dir, seed=3, n_train=110, n_heldout=55)
    return data_dir


def test_round_trip_is_exact(built):
    for split, n in (("train", 110), ("heldout", 55)):
        assert dataset.load(built, split, seed=3, n_train=110, n_heldout=55) == gen.generate(3, split, n)


def test_random_access_without_tensorflow(built):
    assert "tensorflow" not in sys.modules  # only tensorflow_datasets' numpy path is used
    src = tfds.data_source("sandbox_scenarios/seed3_n110_55", data_dir=str(built), split="heldout")
    assert len(src) == 55
    specs = gen.generate(3, "heldout", 55)
    for i in (0, 17, 54):
        rec = src[i]
        assert dataset.from_example(rec) == specs[int(rec["index"])]


def test_example_round_trip_covers_every_cell():
    specs = gen.generate(5, "train", 11)  # one scenario per cell: None calls, injections, floats, booleans
    assert [dataset.from_example(dataset.to_example(i, s)) for i, s in enumerate(specs)] == specs


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sandbox_scenarios/seed0 dataset"):
        dataset.load(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        dataset.load(tmp_path, "test")
    assert set(SPLITS) == {"train", "heldout"}
