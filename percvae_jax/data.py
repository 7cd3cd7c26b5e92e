"""Image sources (TFDS Oxford pets, a folder, embedded photos) and HR crop batches.

Sources hand out decoded 8-bit RGB images by index. Training batches are a pure
function of (seed, step): the image order comes from a per-epoch permutation and
the crops from a per-step generator, so a resumed run sees exactly the batches an
uninterrupted one would, and every process of a multi-host run can build its own
rows of the global batch, reading only the images those rows need. The LR side is
made on the accelerator, inside the train step (see degradation.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from percvae_jax import data_root
from percvae_jax.errors import DataError

# .webp: the carried copies of the evaluation sets are WebP lossless (and of the
# training sets WebP lossy), the smallest Pillow reads; see scripts/prepare_accelerator.py.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Photographs that scikit-image ships: the offline default needs no download.
EMBEDDED_TRAIN = (
  "astronaut.png",
  "rocket.jpg",
  "motorcycle_left.png",
  "hubble_deep_field.jpg",
  "camera.png",
  "brick.png",
  "grass.png",
  "gravel.png",
  "moon.png",
)
EMBEDDED_EVAL = ("chelsea.png", "coffee.png")


class BadImage(ValueError):
  """One image file that cannot be used (corrupt, truncated, not an image...)."""


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
  """Any PIL image (L, LA, P, RGBA, CMYK, 16-bit, float) as HxWx3 uint8 RGB."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # Against the bit depth: 65535 is white, and a dark 16-bit image stays dark.
    array = np.asarray(image, np.float64)
    array = np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(array[..., None], 3, axis=-1)
  if image.mode == "F":
    array = np.asarray(image, np.float64)
    array = np.clip(np.round(array * (255.0 if array.max() <= 1.0 else 1.0)), 0, 255)
    return np.repeat(array.astype(np.uint8)[..., None], 3, axis=-1)
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    # Transparent pixels over white, as image viewers show them.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, rgba)
  return np.asarray(image.convert("RGB"), np.uint8)


def decode_image(path: str) -> np.ndarray:
  """Reads one image file as HxWx3 uint8, upright (EXIF orientation applied); raises
  BadImage saying why it cannot."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        image.load()
        # Phone photos are stored sideways with an EXIF orientation tag: applied here,
        # the one place every image is read (training, evaluation, upscaling).
        return to_rgb_uint8(ImageOps.exif_transpose(image))
  except (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
  ) as e:
    raise BadImage(f"{path}: {type(e).__name__}: {e}") from None


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic (PIL) resize so that the shorter side is `size`; 0 keeps the image."""
  if size <= 0:
    return image
  h, w = image.shape[:2]
  if min(h, w) == size:
    return image
  ratio = size / min(h, w)
  new = (max(size, round(w * ratio)), max(size, round(h * ratio)))
  return np.asarray(Image.fromarray(image).resize(new, Image.BICUBIC))


def unique_stems(relative_paths: Sequence[str]) -> list[str]:
  """One output name (no extension, folders kept) per input path, all different, even
  on a case-insensitive file system.

  A file keeps its stem unless another has the same one (photo.jpg, photo.png): then
  each gets its extension appended (photo_jpg, photo_png), and a name that is still
  taken (by a file photo_jpg.png, which keeps its own) gets a number (photo_jpg_2).
  """
  stems = [os.path.splitext(p)[0] for p in relative_paths]
  counts: dict[str, int] = {}
  for stem in stems:
    counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
  used = {stem.lower() for stem in stems if counts[stem.lower()] == 1}
  names = []
  for path, stem in zip(relative_paths, stems):
    if counts[stem.lower()] == 1:
      names.append(stem)
      continue
    name = unique = f"{stem}_{os.path.splitext(path)[1].lstrip('.').lower()}"
    k = 1
    while unique.lower() in used:
      k += 1
      unique = f"{name}_{k}"
    used.add(unique.lower())
    names.append(unique)
  return names


def list_images(root: str, extensions: tuple = IMAGE_EXTENSIONS) -> list[str]:
  """Files below `root` ending in one of `extensions`, recursively, in a stable order."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    found.extend(
      os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(extensions)
    )
  return found


def default_cache_bytes() -> int:
  """What an ImageSet keeps decoded by default: 40% of the machine's memory."""
  try:
    return int(0.4 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return 8 << 30


@dataclasses.dataclass
class ImageSet:
  """Decoded RGB images by index; `load` is called once per image, then cached.

  The cache holds at most `cache_bytes` of decoded pixels (default: 40% of the
  machine's memory): past that, images are decoded again at each use, by the workers
  of `TrainBatches.stream` in parallel, instead of exhausting the memory. Which
  images stay cached is the first ones loaded; with random access no eviction
  policy would do better than that.
  """

  names: Sequence[str]
  load: Callable[[int], np.ndarray]
  cache_bytes: int | None = None

  def __post_init__(self):
    self._cache: dict[int, np.ndarray] = {}
    self._cached_bytes = 0
    self._limit = default_cache_bytes() if self.cache_bytes is None else self.cache_bytes
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.names)

  def __getitem__(self, index: int) -> np.ndarray:
    image = self._cache.get(index)
    if image is None:
      image = self.load(index)
      with self._lock:
        if index not in self._cache and self._cached_bytes + image.nbytes <= self._limit:
          self._cache[index] = image
          self._cached_bytes += image.nbytes
    return image


def read_folder(root: str, min_size: int, resize: int = 0) -> ImageSet:
  """Decodes every image below `root`, skipping unusable files with one warning each.

  Images whose shorter side (after `resize`) is below `min_size` are skipped too.
  """
  if not os.path.isdir(root):
    raise DataError(f"{root!r} is not a directory of images.")
  paths = list_images(root)

  def load(path):
    try:
      image = resize_shorter(decode_image(path), resize)
    except BadImage as e:
      return None, f"skipping unreadable image {e}"
    if min(image.shape[:2]) < min_size:
      return None, (
        f"skipping {path}: {image.shape[1]}x{image.shape[0]} px is smaller "
        f"than the {min_size} px crop"
      )
    return image, None

  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    results = list(pool.map(load, paths))
  names, images = [], []
  for path, (image, problem) in zip(paths, results):
    if problem:
      logging.warning(problem)
    else:
      names.append(os.path.relpath(path, root))
      images.append(image)
  skipped = len(paths) - len(images)
  if skipped:
    logging.warning("%s: skipped %d of %d image files.", root, skipped, len(paths))
  if not images:
    raise DataError(
      f"{root!r} holds no usable image ({len(paths)} files with extensions "
      f"{', '.join(IMAGE_EXTENSIONS)} found, {skipped} unusable); point it at a "
      f"folder of photos at least {min_size} px on the shorter side."
    )
  return ImageSet(names, images.__getitem__)


def read_folders(roots: Sequence[str], min_size: int, resize: int = 0) -> ImageSet:
  """`read_folder` over several folders, as one set; names are prefixed by their
  folder's name when there is more than one (T91/t1.png, BSD200/2092.png)."""
  if len(roots) == 1:
    return read_folder(roots[0], min_size, resize)
  sets = [read_folder(root, min_size, resize) for root in roots]
  names = [
    os.path.join(os.path.basename(os.path.normpath(root)), name)
    for root, images in zip(roots, sets)
    for name in images.names
  ]
  loads = [(images, i) for images in sets for i in range(len(images))]
  return ImageSet(names, lambda index: loads[index][0][loads[index][1]])


def embedded_images(split: str, resize: int = 0) -> ImageSet:
  """The real photographs bundled with scikit-image (no download)."""
  import skimage  # only the offline photos need it.

  folder = os.path.join(os.path.dirname(skimage.__file__), "data")
  names = EMBEDDED_TRAIN if split == "train" else EMBEDDED_EVAL
  images = [resize_shorter(decode_image(os.path.join(folder, n)), resize) for n in names]
  return ImageSet(list(names), images.__getitem__)


def tfds_images(name: str, split: str, data_dir: str, resize: int = 0) -> ImageSet:
  """A TFDS image dataset through random-access `tfds.data_source`, decoded lazily."""
  try:
    import tensorflow_datasets as tfds  # the optional `pets` extra.
  except ImportError:
    raise DataError(
      f"the {name} dataset needs TensorFlow Datasets, an extra: install it "
      "with `pip install 'percvae_jax[pets]'`, or train on a folder of "
      "images (--config.data.name=folder)."
    ) from None
  source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  names = [f"{split}/{i}" for i in range(len(source))]

  def load(index: int) -> np.ndarray:
    return resize_shorter(to_rgb_uint8(Image.fromarray(np.asarray(source[index]["image"]))), resize)

  return ImageSet(names, load)


def load_split(data_config, split: str) -> ImageSet:
  """The images of `split` ("train" or "eval") for `config.data`."""
  resize = data_config.resize_shorter
  if data_config.name == "oxford_iiit_pet":
    return tfds_images(
      "oxford_iiit_pet", "train" if split == "train" else "test", data_config.tfds_data_dir, resize
    )
  if data_config.name == "folder":
    names = data_config.train_dir if split == "train" else data_config.eval_dir
    return read_folders(
      data_root.resolve_all(names, data_config.get("root")), data_config.hr_size, resize
    )
  if data_config.name == "embedded":
    return embedded_images(split, resize)
  raise DataError(f"unknown dataset {data_config.name!r}")


def crop_to(image: np.ndarray, size: int) -> np.ndarray:
  """A square crop of `size`; an image smaller than that is upscaled (bicubic) first."""
  if min(image.shape[:2]) < size:
    image = resize_shorter(image, size)
  return image


@dataclasses.dataclass(frozen=True)
class TrainBatches:
  """Random HR crops with flips; batch `step` depends only on (seed, step).

  `rows` selects which rows of the global batch this process builds. With
  `min_downscale` < 1, each crop is first taken at 1/s of `hr_size` for a scale s drawn
  uniformly from [min_downscale, 1] and downscaled (PIL bicubic, antialiased) to
  `hr_size`: the images seen at several scales, as LapSRN and VDSR augment the 291.
  """

  images: ImageSet
  hr_size: int
  batch_size: int
  seed: int
  rows: slice = dataclasses.field(default_factory=lambda: slice(None))
  min_downscale: float = 1.0

  def image_indices(self, step: int) -> np.ndarray:
    n = len(self.images)
    first = step * self.batch_size
    positions = np.arange(first, first + self.batch_size)
    epochs = positions // n
    out = np.empty(self.batch_size, np.int64)
    for epoch in np.unique(epochs):
      order = np.random.default_rng([self.seed, 0, int(epoch)]).permutation(n)
      mask = epochs == epoch
      out[mask] = order[positions[mask] % n]
    return out

  def batch(self, step: int) -> np.ndarray:
    """This process's rows of global batch `step`, uint8 [rows, hr, hr, 3]."""
    rng = np.random.default_rng([self.seed, 1, step])
    corners = rng.random((self.batch_size, 2))
    flips = rng.random((self.batch_size, 2)) < 0.5
    # Its own stream, so that batches without the augmentation stay as they were.
    downscales = np.random.default_rng([self.seed, 2, step]).uniform(
      self.min_downscale, 1.0, self.batch_size
    )
    indices = self.image_indices(step)
    rows = range(self.batch_size)[self.rows]
    out = np.empty((len(rows), self.hr_size, self.hr_size, 3), np.uint8)
    for k, row in enumerate(rows):
      image = crop_to(self.images[int(indices[row])], self.hr_size)
      size = self.hr_size
      if self.min_downscale < 1.0:
        size = min(round(self.hr_size / downscales[row]), *image.shape[:2])
      top = int(corners[row, 0] * (image.shape[0] - size + 1))
      left = int(corners[row, 1] * (image.shape[1] - size + 1))
      crop = image[top : top + size, left : left + size]
      if size != self.hr_size:
        crop = np.asarray(Image.fromarray(crop).resize((self.hr_size,) * 2, Image.BICUBIC))
      if not (flips[row, 0] or flips[row, 1]):
        out[k] = crop
        continue
      if flips[row, 0]:
        crop = crop[:, ::-1]
      if flips[row, 1]:
        crop = np.swapaxes(crop, 0, 1)  # with the mirror: 4 of the 8 flips and rotations.
      # One channel plane at a time: numpy copies a flipped or transposed HxWx3 view
      # pixel by pixel, 3 bytes at a time, 4x slower than these 3 strided copies.
      for channel in range(3):
        out[k, :, :, channel] = crop[:, :, channel]
    return out

  def stream(
    self, first_step: int, last_step: int, workers: int | None = None, ahead: int | None = None
  ) -> Iterator[np.ndarray]:
    """`batch(s)` for s in [first_step, last_step), in order, built by `workers`
    threads (default `default_workers()`) up to `ahead` batches (default 2 per
    worker) before they are asked for. Each batch is still a function of (seed,
    step) alone, so the stream is the same whatever the workers, and a resumed run
    gets the batches an uninterrupted one would. The copies and the decoding (of
    images past the ImageSet's cache) release the GIL, so threads run in parallel."""
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1:
      yield from (self.batch(step) for step in range(first_step, last_step))
      return
    ahead = max(1, ahead or 2 * workers)
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="train-batches")
    pending: collections.deque = collections.deque()
    try:
      step = first_step
      while pending or step < last_step:
        while step < last_step and len(pending) < ahead:
          pending.append(pool.submit(self.batch, step))
          step += 1
        yield pending.popleft().result()
    finally:
      pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
  """Threads that build training batches by default: half the cores, 1 to 8 (the
  rest run the train loop, the device transfer and the runtime)."""
  return max(1, min(8, len(os.sched_getaffinity(0)) // 2))


def training_data(data_config) -> tuple[ImageSet, np.ndarray]:
  """The training images and the evaluation crops (uint8) a training run uses."""
  train_images = load_split(data_config, "train")
  eval_hr, _ = eval_crops(
    load_split(data_config, "eval"),
    data_config.hr_size,
    data_config.num_eval_images,
    data_config.eval_crops_per_image,
  )
  logging.info(
    "%d training images, %d evaluation crops of %d px.",
    len(train_images),
    len(eval_hr),
    data_config.hr_size,
  )
  return train_images, eval_hr


def eval_crops(
  images: ImageSet, size: int, limit: int, per_image: int = 1
) -> tuple[np.ndarray, list[str]]:
  """Up to `limit` crops of `size`, uint8 [n, size, size, 3]: the central crop of each
  image, or with `per_image` > 1 up to that many tiles of each image's central grid."""
  crops, names = [], []
  for i in range(len(images)):
    image = crop_to(images[i], size)
    if per_image == 1:
      corners = [((image.shape[0] - size) // 2, (image.shape[1] - size) // 2)]
    else:
      rows, cols = image.shape[0] // size, image.shape[1] // size
      top, left = (image.shape[0] - rows * size) // 2, (image.shape[1] - cols * size) // 2
      corners = [(top + r * size, left + c * size) for r in range(rows) for c in range(cols)]
    for top, left in corners[:per_image]:
      crops.append(image[top : top + size, left : left + size])
      names.append(f"{images.names[i]}@{top},{left}")
      if len(crops) == limit:
        return np.stack(crops), names
  return np.stack(crops), names


def device_batches(batches: TrainBatches, parallel, first_step: int, last_step: int) -> Iterator:
  """The global batches of steps [first_step, last_step) on the devices
  (`parallel`: a devices.DataParallel), as the training loop consumes them: built by
  `stream`'s threads, put on the devices by a prefetching one."""
  return prefetch(
    {"hr": parallel.global_batch(rows, batches.batch_size)}
    for rows in batches.stream(first_step, last_step)
  )


def prefetch(batches: Iterator, size: int = 2) -> Iterator:
  """Runs `batches` in a background thread, `size` items ahead (errors re-raised).

  Closing the returned generator (or dropping it) stops that thread and closes
  `batches` before it returns: a thread left running into the runtime's teardown at
  exit (a stop on request, a time budget, a benchmark's timed window) can abort the
  process."""
  buffer: queue.Queue = queue.Queue(maxsize=size)
  done, stop = object(), threading.Event()

  def offer(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for item in batches:
        if not offer(item):
          return
      offer(done)
    except BaseException as e:  # re-raised in the consumer.
      offer(e)
    finally:
      if hasattr(batches, "close"):
        batches.close()  # in this thread, the one that runs the generator.

  producer = threading.Thread(target=produce, name="prefetch", daemon=True)
  producer.start()
  try:
    while (item := buffer.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    producer.join()
