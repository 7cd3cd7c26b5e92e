"""scripts/benchmark_peers.py: peers whose files are absent are skipped in one line each,
a peer scores exactly as what it computes (bicubic itself scores as bicubic, on either
LR), start-up is timed apart from the steady state, and, where OpenCV's models are at
hand ($PERCVAE_PEERS_DIR), a real FSRCNN beats bicubic."""

import os
import time

import numpy as np
import pytest

from percvae_jax import data_root, degradation
from tests import helpers

bp = helpers.load_script("benchmark_peers")
QUIET = lambda _line: None


def opencv_or_skip():
  try:
    return bp.opencv()
  except bp.BenchmarkError as e:
    pytest.skip(str(e))


def bicubic_twin(scale: int) -> "bp.Method":
  """A peer that is bicubic upscaling itself."""
  return bp.Method(
    "bicubic twin", scale, lambda: lambda lr: np.asarray(degradation.bicubic_upscale(lr, scale))
  )


def test_absent_peer_files_are_skipped_in_one_line_each(tmp_path):
  (tmp_path / "FSRCNN_x2.pb").write_bytes(b"")
  lines = []
  methods = bp.peer_methods(str(tmp_path), [2, 3], say=lines.append)
  assert [(m.name, m.scale) for m in methods] == [("FSRCNN", 2)]
  # LapSRN has no x3: not a missing file, no line.
  expected = "FSRCNN x3, FSRCNN-small x2, FSRCNN-small x3, ESPCN x2, ESPCN x3, LapSRN x2"
  assert [line.split(":")[0] for line in lines] == [f"skipping {e}" for e in expected.split(", ")]
  assert all("\n" not in line and line.endswith(".pb is absent.") for line in lines)


def test_bad_arguments_are_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv(data_root.ENV, str(tmp_path))  # --data-root below sets it.
  out = tmp_path / "out"
  refusals = {
    "--peers-dir=": ["--peers-dir", str(tmp_path / "absent")],
    "--parts='quality,sped'": ["--peers-dir", str(tmp_path), "--parts", "quality,sped"],
    "BSD100 not found under the data root": ["--peers-dir", str(tmp_path), "--data-root", str(out)],
  }
  for expected, argv in refusals.items():
    assert bp.main([*argv, "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
  assert not out.exists()


@pytest.mark.slow
def test_a_peer_that_is_bicubic_scores_exactly_as_bicubic_on_either_lr(tmp_path):
  opencv_or_skip()
  photos = str(helpers.write_photos(tmp_path / "photos", count=2, size=48))
  results = bp.quality([bicubic_twin(2)], [photos], [2], ["pil", "cv2"], say=QUIET)
  blocks = results["x2"]
  for kind in ("pil", "cv2"):
    assert blocks[kind][photos]["bicubic twin"] == blocks[kind][photos]["bicubic"]
  # The cv2 block's LR is another image: bicubic scores otherwise.
  assert blocks["cv2"][photos]["bicubic"]["psnr_y"] != blocks["pil"][photos]["bicubic"]["psnr_y"]
  table = bp.quality_table(results, "x2").splitlines()
  assert table[2] == f"| method | LR | {photos} |"
  cells = [[c.strip() for c in row.strip("|").split("|")] for row in table[4:]]
  rows = {(method, lr): scores for method, lr, scores in cells}
  assert list(rows) == [
    ("bicubic", "PIL"),
    ("bicubic twin", "PIL"),
    ("bicubic", "cv2"),
    ("bicubic twin", "cv2"),
  ]
  assert rows["bicubic twin", "PIL"] == rows["bicubic", "PIL"]
  assert rows["bicubic twin", "cv2"] == rows["bicubic", "cv2"]
  machine = dict(bp.machine(threads=2), load_average_end=0.5)
  text = bp.report(dict(machine=machine, quality=results), [], photos)
  assert text.startswith(f"Measured {machine['date']} on {machine['cpu']}, ")
  assert "\n- LR PIL: PIL's bicubic" in text and "\n- LR cv2: OpenCV's" in text


def test_speed_times_the_start_up_apart_from_the_steady_state(tmp_path):
  photos = str(helpers.write_photos(tmp_path / "photos", count=3, size=48))
  loads = []

  def slow_load():
    loads.append(1)
    time.sleep(0.3)
    return lambda lr: np.repeat(np.repeat(lr, 2, axis=0), 2, axis=1)

  results = bp.speed([bp.Method("nearest", 2, slow_load)], photos, 2, rounds=3, say=QUIET)
  row = results["x2"]["nearest"]
  assert loads == [1]  # loaded once: the steady state never counts it.
  assert row["startup_s"] >= 0.3 and len(row["pass_s"]) == 3
  assert row["images"] == 2 and row["megapixels"] == 2 * 48 * 48 / 1e6
  assert row["mp_per_s"] == pytest.approx(row["megapixels"] / sorted(row["pass_s"])[1])
  assert row["mp_per_s"] > 10 * row["megapixels"] / row["startup_s"]
  line = bp.speed_table(results, "photos").splitlines()[-1]
  assert line.startswith(f"| nearest | x2 | {row['startup_s']:.2f} | {row['mp_per_s']:.2f} |")


@pytest.mark.slow
def test_a_real_fsrcnn_x2_beats_bicubic_on_two_set5_images(tmp_path):
  peers_dir = os.environ.get(bp.PEERS_ENV)
  if not peers_dir or not os.path.isfile(os.path.join(peers_dir, "FSRCNN_x2.pb")):
    pytest.skip(f"${bp.PEERS_ENV} names no folder holding OpenCV's FSRCNN_x2.pb")
  opencv_or_skip()
  images = tmp_path / "set5"
  images.mkdir()
  for name in ("bird.png", "butterfly.png"):  # 128 px crops: one shape to compile
    helpers.crop_of(helpers.shared_data("Set5", name), 128).save(images / name)
  fsrcnn = [m for m in bp.peer_methods(peers_dir, [2], say=QUIET) if m.name == "FSRCNN"]
  means = bp.quality(fsrcnn, [str(images)], [2], ["pil"], say=QUIET)["x2"]["pil"][str(images)]
  assert means["FSRCNN"]["psnr_y"] > means["bicubic"]["psnr_y"] + 0.5, means
  assert means["FSRCNN"]["lpips"] < means["bicubic"]["lpips"], means
