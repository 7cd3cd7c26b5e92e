"""Image sources and training batches: TFDS (mocked), folders of real photos, bad files."""

import os

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data, tiny_config
from percvae_jax import data


def test_folder_source_reads_real_photos():
  images = data.read_folder(str(shared_data("SunHays80")), min_size=128)
  assert len(images) == 80
  first = images[0]
  assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
  assert min(first.shape[:2]) >= 128
  assert images[0] is images[0]  # decoded once, then cached


def test_folder_source_recursive_formats_and_modes(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 50, 3), np.uint8)
  (tmp_path / "sub" / "deeper").mkdir(parents=True)
  Image.fromarray(rgb).save(tmp_path / "a.png")
  Image.fromarray(rgb).save(tmp_path / "sub" / "b.jpg", quality=95)
  Image.fromarray(rgb).save(tmp_path / "sub" / "deeper" / "c.bmp")
  Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
  rgba = np.concatenate([rgb, np.full((40, 50, 1), 255, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
  (tmp_path / "notes.txt").write_text("not an image and not an image extension")
  images = data.read_folder(str(tmp_path), min_size=32)
  assert sorted(images.names) == ["a.png", "alpha.png", "gray.png",
                                  os.path.join("sub", "b.jpg"),
                                  os.path.join("sub", "deeper", "c.bmp")]
  by_name = dict(zip(images.names, (images[i] for i in range(len(images)))))
  np.testing.assert_array_equal(by_name["a.png"], rgb)
  np.testing.assert_array_equal(by_name[os.path.join("sub", "deeper", "c.bmp")], rgb)
  np.testing.assert_array_equal(by_name["alpha.png"], rgb)  # opaque alpha changes nothing
  np.testing.assert_array_equal(by_name["gray.png"], np.repeat(rgb[..., :1], 3, -1))


def test_tfds_oxford_pets_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_config(data__name="oxford_iiit_pet")
  with tfds.testing.mock_data(num_examples=6):
    train = data.load_split(config.data, "train")
    evaluation = data.load_split(config.data, "eval")
    assert len(train) == 6 and len(evaluation) == 6
    batches = data.TrainBatches(train, 32, 4, seed=0)
    batch = batches.batch(0)
  assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8


def _images(n=5, size=48):
  rng = np.random.default_rng(1)
  arrays = [rng.integers(0, 256, (size + i, size + 2 * i, 3), np.uint8) for i in range(n)]
  return data.ImageSet([f"{i}" for i in range(n)], arrays.__getitem__)


def test_train_batches_depend_only_on_seed_and_step():
  images = _images()
  a = data.TrainBatches(images, 32, 6, seed=3)
  b = data.TrainBatches(images, 32, 6, seed=3)
  np.testing.assert_array_equal(a.batch(7), b.batch(7))
  assert not np.array_equal(a.batch(7), a.batch(8))
  assert not np.array_equal(a.batch(7), data.TrainBatches(images, 32, 6, seed=4).batch(7))
  # Each process's rows, put together, are the single-process batch.
  parts = [data.TrainBatches(images, 32, 6, seed=3, rows=slice(i, i + 3)).batch(7)
           for i in (0, 3)]
  np.testing.assert_array_equal(np.concatenate(parts), a.batch(7))


def test_train_batches_visit_every_image_each_epoch():
  images = _images(n=5)
  batches = data.TrainBatches(images, 32, 5, seed=0)
  for step in range(3):
    assert sorted(batches._image_indices(step)) == list(range(5))  # pylint: disable=protected-access


def test_eval_crops_are_central_and_bounded():
  images = _images(n=3, size=64)
  crops, names = data.eval_crops(images, 32, limit=10)
  assert crops.shape == (3, 32, 32, 3)
  image = images[0]
  np.testing.assert_array_equal(crops[0], image[16:48, 16:48])
  tiles, names = data.eval_crops(images, 32, limit=5, per_image=4)
  assert tiles.shape == (5, 32, 32, 3) and len(set(names)) == 5
