"""Images read and written whole: mode, bit depth, alpha, ICC profile and EXIF kept.

`read` gives the pixels as they are stored, uint8 or uint16 with 1 to 4 channels
(L, LA, RGB, RGBA), each value read against its bit depth (65535 is white in a 16-bit
file, never stretched to the image's own range), upright (the EXIF orientation applied,
and then reset to 1 in the EXIF it returns). Pillow decodes 16-bit colour PNGs and
TIFFs to 8 bits, so those take their own paths (below). What had to change on the way
(the first frame of an animation, CMYK converted) comes back as `notes`, one line each.

`write` takes the SR image as an iterator of float bands (rows of the image, top to
bottom, values in [0,1]) and quantises each band to the output's depth as it comes:
PNG and TIFF are written band by band, so an output of any size needs the memory of one
band; JPEG and WebP are encoded by Pillow from the whole 8-bit image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from percvae_jax import data
from percvae_jax.data import BadImage

# What `upscale` reads: the training reader's formats, and TIFF and GIF.
IMAGE_EXTENSIONS = data.IMAGE_EXTENSIONS + (".tif", ".tiff", ".gif")
# Output formats (the --format values) and their file extensions.
EXTENSIONS = {"png": ".png", "tiff": ".tiff", "webp": ".webp", "jpg": ".jpg"}
# The format family an input keeps by default (Pillow's format names); others give PNG.
FAMILIES = {"PNG": "png", "TIFF": "tiff", "WEBP": "webp", "JPEG": "jpg", "MPO": "jpg"}
# Largest side each lossy format can hold (WebP's is 14 bits).
MAX_SIDE = {"webp": 16383, "jpg": 65535}
# Pillow's own guard against decompression bombs, 89.5 megapixels; --max-pixels moves it.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
DEFAULT_QUALITY = 95
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
EXIF_ORIENTATION = 0x0112
# ITU-R 601-2 luma, as Pillow's convert("L"): RGB back to one channel.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class TooLarge(BadImage):
  """An image with more pixels than --max-pixels allows."""


@dataclasses.dataclass
class Picture:
  """One image as stored: HxWxC uint8 or uint16 pixels, C = 1 (L), 2 (LA), 3 (RGB) or
  4 (RGBA), alpha straight (not premultiplied), and what travels with them."""

  pixels: np.ndarray
  format: str  # Pillow's name of the file's format: "PNG", "JPEG", ...
  icc_profile: bytes | None = None
  exif: Image.Exif | None = None  # orientation reset to 1: the pixels are upright.
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def bits(self) -> int:
    return 16 if self.pixels.dtype == np.uint16 else 8

  @property
  def mode(self) -> str:
    return MODES[self.pixels.shape[-1]]

  @property
  def has_alpha(self) -> bool:
    return self.pixels.shape[-1] in (2, 4)


def list_images(root: str) -> list[str]:
  """The image files below `root` that `read` takes, recursively, in a stable order."""
  return data.list_images(root, IMAGE_EXTENSIONS)


@contextlib.contextmanager
def _own_size_guard():
  """Pillow's global limit off while `read` applies its own (`max_pixels`)."""
  saved = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = saved


def read(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
  """The image in `path`, whole; raises BadImage (TooLarge past `max_pixels`, 0 for no
  limit) saying why it cannot."""
  try:
    with _own_size_guard(), warnings.catch_warnings(), Image.open(path) as image:
      warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on odd metadata.
      _check_size(path, *image.size, max_pixels)
      picture = _decode(path, image)
  except BadImage:
    raise
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
    if not _is_tiff(path):
      raise BadImage(f"{path}: {type(e).__name__}: {e}") from None
    picture = _tifffile_picture(path, max_pixels)  # 16-bit LA, ...: Pillow opens none.
  orientation = picture.exif.get(EXIF_ORIENTATION, 1) if picture.exif is not None else 1
  picture.pixels = np.ascontiguousarray(orient(picture.pixels, orientation))
  if picture.exif is not None and EXIF_ORIENTATION in picture.exif:
    picture.exif[EXIF_ORIENTATION] = 1
  return picture


def _check_size(path: str, width: int, height: int, max_pixels: int) -> None:
  if max_pixels and width * height > max_pixels:
    raise TooLarge(
      f"{path}: {width}x{height} is {width * height:,} px, more than --max-pixels="
      f"{max_pixels} (a guard against decompression bombs); pass "
      f"--max-pixels={width * height} (or 0, no limit) to upscale it."
    )


def _is_tiff(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
  except OSError:
    return False


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
  """`pixels` (HxWxC) turned upright as EXIF `orientation` asks (Pillow's exif_transpose
  for any dtype)."""
  turns = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
  }
  return turns.get(orientation, lambda a: a)(pixels)


def _decode(path: str, image: Image.Image) -> Picture:
  notes = []
  frames = getattr(image, "n_frames", 1)
  if frames > 1:
    notes.append(f"{path} holds {frames} frames (animated): upscaling the first one only.")
  # Before getexif, which may read past the pixels (and so load them) to find EXIF.
  pixels = _png16(path, image) if image.format == "PNG" else None
  try:
    exif = image.getexif()
  except Exception:  # noqa: BLE001 (a damaged EXIF block must not lose the image)
    exif = None
  if exif and image.format == "TIFF":
    exif = _descriptive_tags(exif)
  exif = exif if exif else None
  picture = Picture(None, image.format or "", image.info.get("icc_profile"), exif, notes)
  if pixels is None and image.format == "TIFF":
    pixels = _tiff16(path, image)
  if pixels is None:
    image.load()
    pixels = _pillow_pixels(path, image, picture)
  picture.pixels = pixels
  return picture


def _descriptive_tags(ifd0: Image.Exif) -> Image.Exif:
  """The EXIF of a TIFF without its structural tags (strip offsets, sizes...), which
  describe that file's layout, not the photograph."""
  kept = Image.Exif()
  for tag in (*TIFF_TEXT_TAGS, EXIF_ORIENTATION):
    if tag in ifd0:
      kept[tag] = ifd0[tag]
  for tag in (0x8769, 0x8825):  # the Exif and GPS sub-IFDs
    if tag in ifd0 and (values := ifd0.get_ifd(tag)):
      kept[tag] = values
  return kept


def _pillow_pixels(path: str, image: Image.Image, picture: Picture) -> np.ndarray:
  """The pixels of an image Pillow decodes at full depth, as uint8/uint16 HxWxC."""
  mode = image.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
    return np.asarray(image).astype(np.uint16)[..., None]
  if mode == "I":  # 32-bit integers: 16-bit PNGs in older Pillows; read as 16-bit.
    return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)[..., None]
  if mode == "F":  # floats: [0,1] is black to white.
    values = np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 65535.0
    return np.rint(values).astype(np.uint16)[..., None]
  if mode == "CMYK":
    return np.asarray(_cmyk_to_rgb(path, image, picture))
  if mode in ("P", "PA"):
    transparent = mode == "PA" or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if transparent else "RGB"))
  target = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGBA": "RGBA", "RGBa": "RGBA"}
  converted = image.convert(target.get(mode, "RGB"))
  pixels = np.asarray(converted)
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _cmyk_to_rgb(path: str, image: Image.Image, picture: Picture) -> Image.Image:
  """CMYK through its ICC profile to sRGB (which then travels with it), or Pillow's
  plain conversion where it has none."""
  if picture.icc_profile:
    try:
      srgb = ImageCms.createProfile("sRGB")
      source = ImageCms.ImageCmsProfile(io.BytesIO(picture.icc_profile))
      rgb = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
      picture.icc_profile = ImageCms.ImageCmsProfile(srgb).tobytes()
      picture.notes.append(f"{path} is CMYK: converted to sRGB through its ICC profile.")
      return rgb
    except (ImageCms.PyCMSError, OSError, ValueError):
      pass
  picture.icc_profile = None
  picture.notes.append(
    f"{path} is CMYK without a usable ICC profile: converted to RGB by the plain formula "
    "(colours may shift; convert it to RGB in an editor for exact ones)."
  )
  return image.convert("RGB")


def _png16(path: str, image: Image.Image) -> np.ndarray | None:
  """16-bit colour PNGs at full depth, or None for the others (which Pillow reads whole).

  Pillow's PNG decoder undoes the row filters at any depth, then keeps the high byte of
  each 16-bit value. Its unpackers for little-endian data keep the other byte of the
  same (big-endian) stream, so two decodes give both; a 16-bit LA pixel is 4 bytes,
  which decode as one 8-bit RGBA pixel (L high, L low, A high, A low).
  """
  rawmode = _tile_rawmode(image)
  if rawmode == "LA;16B":
    quad = _decode_as(path, "RGBA", "RGBA").astype(np.uint16)
    return np.stack([quad[..., 0] << 8 | quad[..., 1], quad[..., 2] << 8 | quad[..., 3]], -1)
  if rawmode in ("RGB;16B", "RGBA;16B"):
    mode = rawmode.split(";")[0]
    high = _decode_as(path, mode, rawmode).astype(np.uint16)
    low = _decode_as(path, mode, f"{mode};16L").astype(np.uint16)
    return high << 8 | low
  return None


def _tile_rawmode(image: Image.Image) -> str | None:
  if len(image.tile) != 1:
    return None
  args = image.tile[0][3]
  return args if isinstance(args, str) else args[0] if args else None


def _decode_as(path: str, mode: str, rawmode: str) -> np.ndarray:
  """The PNG in `path` decoded by Pillow with `rawmode` into `mode`."""
  with _own_size_guard(), Image.open(path) as image:
    codec, extents, offset, args = image.tile[0]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    tile = (codec, extents, offset, args)
    image.tile = [ImageFile._Tile(*tile) if hasattr(ImageFile, "_Tile") else tile]
    image._mode = mode  # noqa: SLF001 (the decoder writes into an image of this mode)
    image.load()
    return np.asarray(image).copy()


def _tiff16(path: str, image: Image.Image) -> np.ndarray | None:
  """TIFFs of more than 8 bits and more than one sample, read by tifffile (Pillow
  would keep 8 bits); None for the others."""
  bits = image.tag_v2.get(258, (8,))
  bits = bits if isinstance(bits, tuple) else (bits,)
  if max(bits) <= 8 or len(bits) < 2:
    return None
  return _tifffile_picture(path, 0).pixels


def _tifffile_picture(path: str, max_pixels: int) -> Picture:
  """The first page of a TIFF read by tifffile: grayscale or RGB, with or without
  alpha, 8 to 32-bit integers or floats in [0,1], as 8 or 16 bits."""
  import tifffile  # only TIFFs need it.

  try:
    with tifffile.TiffFile(path) as tiff:
      page = tiff.pages.first
      _check_size(path, page.imagewidth, page.imagelength, max_pixels)
      pixels = page.asarray()
      photometric, extra = int(page.photometric), len(page.extrasamples)
      frames = len(tiff.pages)
      tags = {tag.code: tag.value for tag in page.tags}
  except BadImage:
    raise
  except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as e:
    raise BadImage(f"{path}: {type(e).__name__}: {e}") from None
  if photometric not in (1, 2) or pixels.dtype.kind not in "uf":
    raise BadImage(
      f"{path}: a TIFF of photometric {photometric} and {pixels.dtype} values cannot be "
      "read; save it as 8 or 16-bit RGB or grayscale."
    )
  pixels = pixels[..., None] if pixels.ndim == 2 else pixels
  if pixels.dtype.kind == "f":
    pixels = np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
  elif pixels.dtype.itemsize > 2:
    pixels = (pixels >> (8 * pixels.dtype.itemsize - 16)).astype(np.uint16)  # the top 16 bits.
  colour = 3 if photometric == 2 else 1
  exif = Image.Exif()
  for tag in (*TIFF_TEXT_TAGS, EXIF_ORIENTATION):
    if tag in tags and isinstance(tags[tag], (str, int)):
      exif[tag] = tags[tag]
  notes = [f"{path} holds {frames} pages: upscaling the first one only."] if frames > 1 else []
  icc = tags.get(34675)
  return Picture(
    np.ascontiguousarray(pixels[..., : colour + (1 if extra else 0)]),
    "TIFF",
    bytes(icc) if icc else None,
    exif if len(exif) else None,
    notes,
  )


# ------------------------------------------------------------------------- writing


def choose_format(
  picture: Picture, requested: str | None, height: int, width: int
) -> tuple[str, list[str]]:
  """(format, notes) of an output of `height` x `width` from `picture`: `requested`, or
  the input's format family where it can hold the result, else PNG (16-bit goes to PNG
  or TIFF; alpha never to JPEG; sides past MAX_SIDE to PNG)."""
  if requested:
    if requested not in EXTENSIONS:
      raise ValueError(f"unknown format {requested!r}")
    notes = []
    if requested in MAX_SIDE and max(height, width) > MAX_SIDE[requested]:
      raise BadImage(
        f"the {width}x{height} output is larger than {requested} holds "
        f"({MAX_SIDE[requested]} px a side); pass --format=png or --format=tiff."
      )
    if requested in ("jpg", "webp") and picture.bits == 16:
      notes.append(f"{requested} holds 8 bits: the 16-bit output is written with 8.")
    if requested == "jpg" and picture.has_alpha:
      notes.append("jpg holds no alpha: the output is composited over white.")
    return requested, notes
  family = FAMILIES.get(picture.format, "png")
  if picture.bits == 16 and family not in ("png", "tiff"):
    family = "png"
  if picture.has_alpha and family == "jpg":
    family = "png"
  if family in MAX_SIDE and max(height, width) > MAX_SIDE[family]:
    family = "png"
  return family, []


def quantize(band: np.ndarray, bits: int) -> np.ndarray:
  """Float [0,1] values clipped and rounded to `bits` (8 or 16), as
  `inference.to_uint8` does for 8."""
  peak = 65535.0 if bits == 16 else 255.0
  scaled = np.clip(band, 0.0, 1.0)
  scaled *= peak  # in place: a band of a 10000 px wide image is 50 MB as float32.
  return np.rint(scaled, out=scaled).astype(np.uint16 if bits == 16 else np.uint8)


def write(
  path: str,
  bands: Iterable[np.ndarray],
  *,
  height: int,
  width: int,
  channels: int,
  bits: int,
  fmt: str,
  icc_profile: bytes | None = None,
  exif: Image.Exif | None = None,
  quality: int = DEFAULT_QUALITY,
) -> None:
  """Writes the float bands (rows of `width` x `channels`, top to bottom, [0,1]) of a
  `height`-row image as `fmt` at `bits` per value (8 for JPEG and WebP), atomically:
  a `.part` file renamed at the end, so a run stopped midway leaves no torn image."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  part = path + ".part"
  quantized = (quantize(band, bits) for band in bands)
  try:
    if fmt == "png":
      with open(part, "wb") as f:
        writer = PngWriter(f, width, height, channels, bits, icc_profile, exif)
        for band in quantized:
          writer.write_rows(band)
        writer.close()
    elif fmt == "tiff":
      _write_tiff(part, quantized, height, width, channels, bits, icc_profile, exif)
    else:
      # Each band pasted into Pillow's image as it comes: one whole copy, Pillow's
      # (4 bytes a pixel), not a numpy one beside it (100 MP: 2.09 -> 1.8 GB peak).
      image = Image.new(MODES[channels], (width, height))
      top = 0
      for band in quantized:
        image.paste(
          Image.fromarray(band[..., 0] if channels == 1 else band, MODES[channels]), (0, top)
        )
        top += len(band)
      if top != height:
        raise ValueError(f"{top} rows written of {height}")
      options = {"quality": quality}
      if fmt == "webp" and quality >= 100:
        options = {"lossless": True}
      if icc_profile:
        options["icc_profile"] = icc_profile
      if exif is not None:
        options["exif"] = exif.tobytes()
      image.save(part, format="JPEG" if fmt == "jpg" else "WEBP", **options)
    os.replace(part, path)
  finally:
    if os.path.exists(part):
      os.remove(part)


class PngWriter:
  """A PNG written row band by row band (8 or 16 bits, L, LA, RGB or RGBA), with its
  ICC profile (iCCP) and EXIF (eXIf): memory is one band's, whatever the image's size.

  Every row uses the Paeth filter (computed for 64 rows at once with numpy), and zlib
  level 1, as `upscale` used through Pillow: on a 1000 px photo, the size of Pillow's
  PNG at compress_level=1 (+0.05%), in 75% of its time, and half the time of level 6
  (whose files are 3-9% smaller).
  """

  COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
  CHUNK_ROWS = 64  # rows filtered at once: bounds the int16 temporaries.

  def __init__(
    self,
    f,
    width: int,
    height: int,
    channels: int,
    bits: int,
    icc_profile: bytes | None = None,
    exif: Image.Exif | None = None,
    level: int = 1,
  ):
    self._f = f
    self._height = height
    self._rows = 0
    self._bpp = channels * bits // 8
    self._dtype = np.dtype(">u2") if bits == 16 else np.dtype(np.uint8)
    self._previous = np.zeros(width * self._bpp, np.uint8)
    self._compressor = zlib.compressobj(level)
    self._pending = bytearray()
    f.write(b"\x89PNG\r\n\x1a\n")
    self._chunk(
      b"IHDR", struct.pack(">IIBBBBB", width, height, bits, self.COLOUR_TYPES[channels], 0, 0, 0)
    )
    if icc_profile:
      self._chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
    if exif is not None:
      payload = exif.tobytes()
      self._chunk(b"eXIf", payload[6:] if payload.startswith(b"Exif\x00\x00") else payload)

  def _chunk(self, kind: bytes, payload: bytes) -> None:
    crc = zlib.crc32(payload, zlib.crc32(kind)) & 0xFFFFFFFF
    self._f.write(struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc))

  def write_rows(self, rows: np.ndarray) -> None:
    """Appends `rows` (n x width x channels, uint8 or uint16) below the rows so far."""
    rows = np.ascontiguousarray(rows, self._dtype)
    raw_rows = rows.reshape(len(rows), -1).view(np.uint8)
    for start in range(0, len(raw_rows), self.CHUNK_ROWS):
      raw = raw_rows[start : start + self.CHUNK_ROWS]
      filtered = paeth_filter(raw, self._previous, self._bpp)
      self._previous = raw[-1].copy()
      lines = np.empty((len(raw), raw.shape[1] + 1), np.uint8)
      lines[:, 0] = 4  # Paeth
      lines[:, 1:] = filtered
      self._pending += self._compressor.compress(lines.tobytes())
      if len(self._pending) >= 1 << 20:
        self._chunk(b"IDAT", bytes(self._pending))
        self._pending.clear()
    self._rows += len(rows)

  def close(self) -> None:
    if self._rows != self._height:
      raise ValueError(f"PNG has {self._rows} rows written of {self._height}")
    self._pending += self._compressor.flush()
    self._chunk(b"IDAT", bytes(self._pending))
    self._chunk(b"IEND", b"")


def paeth_filter(raw: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
  """PNG's Paeth filter of byte rows `raw` (n x L), the row above the first being
  `previous`: each byte minus the one of left, up, up-left nearest to left + up - upleft."""
  raw16 = raw.astype(np.int16)
  up = np.empty_like(raw16)
  up[0] = previous
  up[1:] = raw16[:-1]
  left = np.zeros_like(raw16)
  left[:, bpp:] = raw16[:, :-bpp]
  upleft = np.zeros_like(raw16)
  upleft[:, bpp:] = up[:, :-bpp]
  pa = np.abs(up - upleft)
  pb = np.abs(left - upleft)
  pc = np.abs(left + up - 2 * upleft)
  predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
  return (raw16 - predicted).astype(np.uint8)


# IFD0 tags of the EXIF that a TIFF keeps (its Exif sub-IFD is not written).
TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)


def _write_tiff(path, bands, height, width, channels, bits, icc_profile, exif) -> None:
  """A zlib-compressed TIFF written strip by strip as the bands come (tifffile)."""
  import tifffile  # only TIFFs need it.

  dtype = np.uint16 if bits == 16 else np.uint8
  rows_per_strip = 32
  extratags = []
  if icc_profile:
    extratags.append((34675, 7, len(icc_profile), icc_profile, True))
  software = "percvae_jax"
  for tag in TIFF_TEXT_TAGS if exif is not None else ():
    value = exif.get(tag)
    if isinstance(value, str) and value and value.isascii():
      if tag == 305:  # Software: tifffile writes it itself.
        software = value
      else:
        extratags.append((tag, "s", 0, value, True))
  if exif is not None and EXIF_ORIENTATION in exif:
    extratags.append((274, "H", 1, 1, True))

  def strips() -> Iterator[bytes]:
    held = np.empty((0, width, channels), dtype)
    for band in bands:
      held = np.concatenate([held, band.astype(dtype, copy=False)])
      while len(held) >= rows_per_strip:
        yield zlib.compress(held[:rows_per_strip].tobytes(), 1)
        held = held[rows_per_strip:]
    if len(held):
      yield zlib.compress(held.tobytes(), 1)

  shape = (height, width) if channels == 1 else (height, width, channels)
  large = height * width * channels * np.dtype(dtype).itemsize > 2**31
  with tifffile.TiffWriter(path, bigtiff=large) as tiff:
    tiff.write(
      strips(),
      shape=shape,
      dtype=dtype,
      photometric="minisblack" if channels <= 2 else "rgb",
      extrasamples=["unassalpha"] if channels in (2, 4) else None,
      planarconfig="contig",
      compression="zlib",
      rowsperstrip=rows_per_strip,
      metadata=None,
      software=software,
      extratags=extratags,
    )
