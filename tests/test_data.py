"""Image sources and training batches: TFDS (mocked), folders of real photos, bad files."""

import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from percvae_jax import config as config_lib
from percvae_jax import data, data_root
from percvae_jax.errors import ConfigError
from tests import helpers
from tests.helpers import shared_data, tiny_config


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
  assert sorted(images.names) == [
    "a.png",
    "alpha.png",
    "gray.png",
    os.path.join("sub", "b.jpg"),
    os.path.join("sub", "deeper", "c.bmp"),
  ]
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
  parts = [data.TrainBatches(images, 32, 6, seed=3, rows=slice(i, i + 3)).batch(7) for i in (0, 3)]
  np.testing.assert_array_equal(np.concatenate(parts), a.batch(7))


def test_scale_augmentation_shows_each_crop_at_a_random_smaller_scale():
  """Ramps (red = column, green = row): a crop at scale 1 spans 31 values across its 32
  pixels; one taken from a 1/s wider window and downscaled spans about 31/s."""
  rows, columns = np.mgrid[:200, :256]
  ramps = np.stack([columns, rows, rows], axis=-1).astype(np.uint8)
  images = data.ImageSet(["ramps"], lambda _: ramps)

  def spans(batch):
    inside = batch[:, 2:-2, 2:-2, :2].astype(int)  # away from the resampling's edge effects.
    return np.ptp(inside, axis=(1, 2)).max(axis=1) * 31 / 27

  plain = data.TrainBatches(images, 32, 8, seed=0)
  np.testing.assert_allclose(spans(plain.batch(3)), 31, atol=0.5)
  augmented = data.TrainBatches(images, 32, 8, seed=0, min_downscale=0.5)
  wider = np.concatenate([spans(augmented.batch(step)) for step in range(4)])
  assert wider.min() >= 31 and wider.max() <= 31 / 0.5 + 2
  assert wider.max() > 50 and np.ptp(wider) > 15  # the scales spread over [0.5, 1].
  # A crop never reaches past a small image: its scale is capped at what fits.
  small = data.ImageSet(["small"], lambda _: ramps[:40, :40])
  assert data.TrainBatches(small, 32, 8, seed=0, min_downscale=0.5).batch(0).shape == (8, 32, 32, 3)


def test_train_batches_visit_every_image_each_epoch():
  images = _images(n=5)
  batches = data.TrainBatches(images, 32, 5, seed=0)
  for step in range(3):
    assert sorted(batches.image_indices(step)) == list(range(5))


def test_closing_the_prefetch_stops_its_thread_and_closes_the_source():
  """A consumer that stops early (a stop on request, a benchmark's timed window)
  leaves no thread building batches into the process's exit."""
  closed = threading.Event()

  def endless():
    try:
      step = 0
      while True:
        yield step
        step += 1
    finally:
      closed.set()

  stream = data.prefetch(endless())
  assert [next(stream) for _ in range(5)] == list(range(5))
  stream.close()
  assert closed.is_set()
  assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetch_reraises_the_source_error_in_the_consumer():
  def failing():
    yield 1
    raise OSError("disk gone")

  stream = data.prefetch(failing())
  assert next(stream) == 1
  with pytest.raises(OSError, match="disk gone"):
    next(stream)


def test_eval_crops_are_central_and_bounded():
  images = _images(n=3, size=64)
  crops, names = data.eval_crops(images, 32, limit=10)
  assert crops.shape == (3, 32, 32, 3)
  image = images[0]
  np.testing.assert_array_equal(crops[0], image[16:48, 16:48])
  tiles, names = data.eval_crops(images, 32, limit=5, per_image=4)
  assert tiles.shape == (5, 32, 32, 3) and len(set(names)) == 5


def test_comma_separated_folders_are_read_as_one_set_with_prefixed_names(tmp_path):
  helpers.write_photos(tmp_path / "T91", count=2, seed=0)
  helpers.write_photos(tmp_path / "BSD200", count=3, seed=1)
  config = tiny_config(
    data__name="folder",
    data__train_dir=f"{tmp_path / 'T91'}, {tmp_path / 'BSD200'}",
    data__eval_dir=str(tmp_path / "T91"),
  )
  config_lib.validate(config, num_devices=1)
  images = data.load_split(config.data, "train")
  assert sorted(images.names) == [os.path.join("BSD200", f"{i}.png") for i in range(3)] + [
    os.path.join("T91", f"{i}.png") for i in range(2)
  ]
  for i, name in enumerate(images.names):  # each image is its own file's.
    np.testing.assert_array_equal(images[i], data.decode_image(str(tmp_path / name)))
  # One folder: names as before, unprefixed.
  assert sorted(data.load_split(config.data, "eval").names) == ["0.png", "1.png"]
  # Training batches draw from both folders.
  batches = data.TrainBatches(images, 32, 5, seed=0)
  assert sorted(batches.image_indices(0)) == list(range(5))


def test_comma_separated_real_folders():
  images = data.read_folders(
    data_root.resolve_all(f"{shared_data('Set5')},{shared_data('Set14')}"), min_size=32
  )
  assert len(images) == 5 + 14
  assert {name.split(os.sep)[0] for name in images.names} == {"Set5", "Set14"}
  assert os.path.join("Set14", "baboon.png") in images.names


def test_a_missing_folder_in_a_list_is_refused_naming_it(tmp_path):
  helpers.write_photos(tmp_path / "a", count=1)
  config = tiny_config(
    data__name="folder",
    data__train_dir=f"{tmp_path / 'a'},{tmp_path / 'b'}",
    data__eval_dir=str(tmp_path / "a"),
  )
  with pytest.raises(
    ConfigError, match=f"config.data.train_dir=.*: '{tmp_path / 'b'}' is not a directory"
  ):
    config_lib.validate(config, num_devices=1)
  config.data.train_dir = " , "
  with pytest.raises(ConfigError, match="names no folder"):
    config_lib.validate(config, num_devices=1)


@pytest.mark.parametrize(
  "paths,expected",
  [
    (["a.png", "b.png"], ["a", "b"]),
    (["photo.jpg", "photo.png", "photo_jpg.png"], ["photo_jpg_2", "photo_png", "photo_jpg"]),
    (["x/IMG.JPG", "x/img.png"], ["x/IMG_jpg", "x/img_png"]),  # case-insensitive file systems
    (["a.png", os.path.join("sub", "a.png")], ["a", os.path.join("sub", "a")]),
  ],
)
def test_unique_stems_are_all_different(paths, expected):
  stems = data.unique_stems(paths)
  assert stems == expected
  assert len({s.lower() for s in stems}) == len(paths)


def test_a_dark_16_bit_image_is_read_against_its_bit_depth(tmp_path):
  dark = np.full((8, 8), 20_000, np.uint16)  # 30% of white in 16 bits.
  Image.fromarray(dark).save(tmp_path / "dark.png")
  assert np.all(data.decode_image(str(tmp_path / "dark.png")) == round(20_000 / 257))


def test_exif_orientation_is_applied_when_reading(tmp_path):
  upright = helpers.write_sideways_jpeg(tmp_path / "phone.jpg")
  assert Image.open(tmp_path / "phone.jpg").size == (64, 48)  # stored sideways
  image = data.decode_image(str(tmp_path / "phone.jpg"))
  assert image.shape == upright.shape == (64, 48, 3)
  stored = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
  np.testing.assert_array_equal(image, np.rot90(stored, k=-1))  # turned clockwise
  for corner in (np.s_[2:14, 2:14], np.s_[-14:-2, -14:-2], np.s_[24:40, 16:32]):
    np.testing.assert_allclose(image[corner].mean((0, 1)), upright[corner].mean((0, 1)), atol=12)
  # Training data reads it upright too.
  (tmp_path / "train").mkdir()
  shutil.copy(tmp_path / "phone.jpg", tmp_path / "train" / "phone.jpg")
  images = data.read_folder(str(tmp_path / "train"), min_size=32)
  np.testing.assert_array_equal(images[0], image)


def test_bad_image_files_are_converted_or_skipped_with_one_warning_each(tmp_path, caplog):
  fates = helpers.write_troublesome_files(tmp_path)
  with caplog.at_level("WARNING"):
    images = data.read_folder(str(tmp_path), min_size=32)
  kept = {n for n, fate in fates.items() if fate == "kept"}
  assert set(images.names) == kept
  for name in kept:
    image = images[images.names.index(name)]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
  deep = images[images.names.index("deep16.png")]
  assert deep.max() > 200  # 16-bit range scaled down, not clipped to white
  warnings = [r.getMessage() for r in caplog.records]
  for name, fate in fates.items():
    if fate == "skipped":
      assert sum(name in w for w in warnings) == 1, (name, warnings)
  assert any("skipped 4 of 8 image files" in w for w in warnings)


def test_folder_without_usable_images_is_an_error(tmp_path):
  (tmp_path / "a.png").write_text("not an image")
  with pytest.raises(data.DataError, match="holds no usable image"):
    data.read_folder(str(tmp_path), min_size=32)
