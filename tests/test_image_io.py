"""image_io: images read and written whole (mode, bit depth, alpha, ICC, EXIF), and the
inputs that used to go wrong (palette transparency, animation, CMYK, bombs)."""

import functools
import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from percvae_jax import image_io
from tests import helpers

EXIF_MAKE, EXIF_SUBIFD, EXIF_DATETIME_ORIGINAL = 0x010F, 0x8769, 0x9003


def smooth(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
  """A smooth random float image in [0,1] (upscaled noise), HxWxC."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((height // 4 + 2, width // 4 + 2, channels))
  rows = np.linspace(0, coarse.shape[0] - 1, height)
  cols = np.linspace(0, coarse.shape[1] - 1, width)
  image = coarse[np.rint(rows).astype(int)][:, np.rint(cols).astype(int)]
  return (0.5 * image + 0.5 * rng.random((height, width, channels))).astype(np.float32)


@functools.cache
def srgb_profile() -> bytes:
  """One sRGB profile per session: a profile made anew carries another creation time."""
  return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_orientation(orientation: int) -> Image.Exif:
  exif = Image.Exif()
  exif[EXIF_MAKE] = "TestCam"
  exif[image_io.EXIF_ORIENTATION] = orientation
  exif[EXIF_SUBIFD] = {EXIF_DATETIME_ORIGINAL: "2026:12:04 10:00:00"}
  return exif


def write(path, image: np.ndarray, bits: int, fmt: str, bands: int = 3, **kwargs) -> None:
  height, width, channels = image.shape
  edges = np.linspace(0, height, bands + 1).astype(int)
  image_io.write(
    str(path),
    (image[a:b] for a, b in zip(edges[:-1], edges[1:])),
    height=height,
    width=width,
    channels=channels,
    bits=bits,
    fmt=fmt,
    **kwargs,
  )


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_lossless_webp_holds_every_band_in_place(tmp_path, channels):
  """WebP and JPEG are encoded from one image the bands are pasted into as they come:
  each band lands in its rows (lossless WebP gives back every 8-bit value)."""
  image = smooth(23, 31, channels, seed=channels)
  path = tmp_path / "out.webp"
  write(path, image, 8, "webp", bands=4, quality=100)
  with Image.open(path) as written:
    pixels = np.asarray(written.convert(image_io.MODES[channels]))
  expected = image_io.quantize(image, 8)
  np.testing.assert_array_equal(pixels.reshape(expected.shape), expected)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_and_tiff_keep_every_mode_and_depth(tmp_path, fmt, bits, channels):
  image = smooth(23, 31, channels, seed=channels)
  path = tmp_path / f"out.{fmt}"
  write(path, image, bits, fmt, icc_profile=srgb_profile())
  picture = image_io.read(str(path))
  assert (picture.mode, picture.bits) == (image_io.MODES[channels], bits)
  np.testing.assert_array_equal(picture.pixels, image_io.quantize(image, bits))
  assert picture.icc_profile == srgb_profile()
  assert not list(tmp_path.glob("*.part"))  # written atomically, nothing left behind.
  if bits == 16:  # real 16-bit values, not 8-bit ones scaled by 257.
    assert np.any(picture.pixels % 257)


def test_16_bit_png_and_tiff_from_other_encoders_read_at_full_depth(tmp_path):
  """OpenCV (libpng, adaptive filters) and tifffile wrote these; values come back exact."""
  cv2 = pytest.importorskip("cv2")
  tifffile = pytest.importorskip("tifffile")
  rgba = (smooth(29, 37, 4) * 65535).astype(np.uint16)
  cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
  cv2.imwrite(str(tmp_path / "rgb.png"), rgba[..., 2::-1])
  tifffile.imwrite(tmp_path / "la.tif", rgba[..., :2], photometric="minisblack", extrasamples=[2])
  np.testing.assert_array_equal(image_io.read(str(tmp_path / "rgba.png")).pixels, rgba)
  np.testing.assert_array_equal(image_io.read(str(tmp_path / "rgb.png")).pixels, rgba[..., :3])
  np.testing.assert_array_equal(image_io.read(str(tmp_path / "la.tif")).pixels, rgba[..., :2])


def test_16_bit_values_keep_their_meaning(tmp_path):
  """A dark 16-bit image stays dark: read against 65535, never stretched to its max."""
  dark = (smooth(16, 16, 1)[..., 0] * 1000).astype(np.uint16)
  Image.fromarray(dark).save(tmp_path / "dark.png")
  picture = image_io.read(str(tmp_path / "dark.png"))
  assert picture.bits == 16 and picture.mode == "L"
  np.testing.assert_array_equal(picture.pixels[..., 0], dark)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_icc_and_exif_travel_with_orientation_reset(tmp_path, fmt):
  image = smooth(20, 28, 3)
  exif = exif_with_orientation(6)
  path = tmp_path / f"out{image_io.EXTENSIONS[fmt]}"
  write(path, image, 8, fmt, icc_profile=srgb_profile(), exif=exif)
  with Image.open(path) as written:
    assert written.info.get("icc_profile") == srgb_profile()
    back = written.getexif()
    assert back[EXIF_MAKE] == "TestCam"
    assert back.get_ifd(EXIF_SUBIFD)[EXIF_DATETIME_ORIGINAL] == "2026:12:04 10:00:00"
    assert back[image_io.EXIF_ORIENTATION] == 6  # write() stores what it is given...
  picture = image_io.read(str(path))
  assert picture.pixels.shape[:2] == (28, 20)  # ...read() applies it, and resets it.
  assert picture.exif[image_io.EXIF_ORIENTATION] == 1
  assert picture.exif[EXIF_MAKE] == "TestCam"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
  stored = image_io.quantize(smooth(12, 20, 3), 8)
  exif = Image.Exif()
  exif[image_io.EXIF_ORIENTATION] = orientation
  Image.fromarray(stored).save(tmp_path / "o.png", exif=exif)
  expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
  np.testing.assert_array_equal(image_io.read(str(tmp_path / "o.png")).pixels, expected)


def test_sideways_phone_jpeg_is_upright(tmp_path):
  upright = helpers.write_sideways_jpeg(tmp_path / "phone.jpg")
  picture = image_io.read(str(tmp_path / "phone.jpg"))
  assert picture.pixels.shape == upright.shape
  assert picture.pixels[:16, :16, 0].mean() > 200  # the red block top-left, as viewers show.


def test_palette_with_transparency_is_read_as_rgba(tmp_path):
  rgb = image_io.quantize(smooth(16, 16, 3), 8)
  Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png", transparency=0)
  picture = image_io.read(str(tmp_path / "p.png"))
  assert picture.mode == "RGBA"
  assert set(np.unique(picture.pixels[..., 3])) == {0, 255}


def test_animated_gif_gives_its_first_frame_and_says_so(tmp_path):
  frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
  frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
  picture = image_io.read(str(tmp_path / "a.gif"))
  assert picture.pixels[0, 0, 0] > 200 and picture.pixels[0, 0, 2] < 50
  assert len(picture.notes) == 1 and "2 frames" in picture.notes[0]


def test_cmyk_is_converted_to_rgb_and_says_so(tmp_path):
  Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
  picture = image_io.read(str(tmp_path / "c.jpg"))
  assert picture.mode == "RGB"
  red = picture.pixels[4, 4].astype(int)
  assert red[0] > 200 and red[1] < 60 and red[2] < 60
  assert len(picture.notes) == 1 and "CMYK" in picture.notes[0]


def test_an_image_past_max_pixels_is_refused_naming_the_flag(tmp_path):
  Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
  with pytest.raises(image_io.TooLarge, match="--max-pixels=1200"):
    image_io.read(str(tmp_path / "big.png"), max_pixels=1000)
  assert image_io.read(str(tmp_path / "big.png"), max_pixels=0).pixels.shape == (30, 40, 3)


def test_a_one_pixel_image_reads(tmp_path):
  Image.new("L", (1, 1), 77).save(tmp_path / "one.png")
  np.testing.assert_array_equal(image_io.read(str(tmp_path / "one.png")).pixels, [[[77]]])


def test_broken_files_are_bad_images(tmp_path):
  (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
  (tmp_path / "y.tif").write_bytes(b"II*\x00" + bytes(100))
  for name in ("x.png", "y.tif"):
    with pytest.raises(image_io.BadImage, match=name):
      image_io.read(str(tmp_path / name))


def picture(channels: int, bits: int, fmt: str) -> image_io.Picture:
  dtype = np.uint16 if bits == 16 else np.uint8
  return image_io.Picture(np.zeros((2, 2, channels), dtype), fmt)


@pytest.mark.parametrize(
  "channels,bits,fmt,side,expected",
  [
    (3, 8, "JPEG", 100, "jpg"),
    (3, 8, "WEBP", 100, "webp"),
    (4, 8, "WEBP", 100, "webp"),
    (3, 8, "TIFF", 100, "tiff"),
    (4, 16, "TIFF", 100, "tiff"),
    (1, 16, "PNG", 100, "png"),
    (3, 8, "BMP", 100, "png"),
    (3, 8, "GIF", 100, "png"),
    (3, 8, "WEBP", 20000, "png"),  # past WebP's 16383 px
    (4, 8, "JPEG", 100, "png"),  # alpha never to JPEG (a JPEG never has it; a CMYK one...)
  ],
)
def test_the_default_format_keeps_the_family_where_it_can_hold_the_result(
  channels, bits, fmt, side, expected
):
  assert image_io.choose_format(picture(channels, bits, fmt), None, side, side) == (expected, [])


def test_a_requested_format_that_cannot_hold_it_says_so_or_refuses():
  fmt, notes = image_io.choose_format(picture(4, 16, "PNG"), "jpg", 10, 10)
  assert fmt == "jpg" and len(notes) == 2  # 8 bits, no alpha: both said.
  with pytest.raises(image_io.BadImage, match="--format=png"):
    image_io.choose_format(picture(3, 8, "PNG"), "webp", 10, 17000)


def test_png_writer_matches_pillow_on_a_photo_sized_band_layout():
  """Paeth-filtered rows across band and chunk borders decode to the same pixels."""
  image = image_io.quantize(smooth(150, 70, 3), 8)
  buffer = io.BytesIO()
  writer = image_io.PngWriter(buffer, 70, 150, 3, 8)
  for start in (0, 1, 100):  # bands of 1, 99 and 50 rows; chunks of 64 inside.
    writer.write_rows(image[start : {0: 1, 1: 100, 100: 150}[start]])
  writer.close()
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))), image)
