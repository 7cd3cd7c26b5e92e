"""Where a run's numbers go: DIR/metrics.jsonl, TensorBoard events, and the log.

TensorBoard files are written with tensorboardX, so no TensorFlow is needed to
write them. Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics file; a torn last line (a kill or a full disk during
  the append) is dropped with a warning."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for k, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if k < len(lines) - 1:
        raise
      logging.warning(
        "%s: dropping its torn last line %r (written when a run stopped).", path, line[:80]
      )
  return records


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch,
  where installed, only to accept its tensors (3.7 s of every training's start on 2
  cores), and we give it numpy. A None in sys.modules makes that import fail as if torch
  were absent; torch stays importable afterwards. Only the writing process needs it."""
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class Reporter:
  """Appends metrics to DIR/metrics.jsonl and DIR's TensorBoard events."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = None
    if enabled:
      self._tensorboard = _summary_writer_class()(workdir)

  def truncate_after(self, step: int) -> None:
    """Forgets lines past `step`, written by a run that stopped before its next save,
    and a torn last line."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [r for r in read_jsonl(self.path) if r["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)

  def write(self, step: int, values: dict, split: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    if split != "train":
      record["split"] = split
    record.update({k: float(v) for k, v in values.items()})
    _append_line(self.path, json.dumps(record) + "\n")
    for key, value in values.items():
      self._tensorboard.add_scalar(f"{split}/{key}", float(value), int(step))

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """HWC uint8 images, one TensorBoard image per entry."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tensorboard.add_image(name, image, int(step), dataformats="HWC")

  def write_grid(self, step: int, name: str, images: dict, keys, count: int = 4) -> None:
    """One TensorBoard image: a row per example (the first `count`), a column per key."""
    rows = min(count, len(images[keys[0]]))
    self.write_images(step, {name: image_grid([[images[k][i] for k in keys] for i in range(rows)])})

  def flush(self) -> None:
    if self.enabled:
      self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()


def _append_line(path: str, line: str) -> None:
  """Appends one whole line or nothing: one write, and on a failed or short write
  (a full disk) the file is cut back to where it was."""
  payload = line.encode()
  descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(descriptor).st_size
    try:
      written = os.write(descriptor, payload)
    except OSError:
      os.ftruncate(descriptor, size)
      raise
    if written != len(payload):
      os.ftruncate(descriptor, size)
      raise OSError(f"{path}: only {written} of {len(payload)} bytes written (disk full?)")
  finally:
    os.close(descriptor)


def format_terms(values: dict) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in values.items())


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def image_grid(
  rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None
) -> np.ndarray:
  """Rows of panels side by side, as one uint8 image: LR | SR | HR and the like.

  Panels are HxWx3, float in [0,1] or uint8; one smaller than its row's tallest (an
  LR beside its SR) is enlarged by pixel repetition. `titles` label the columns in a
  strip above them.
  """
  as_uint8 = lambda p: (
    np.asarray(p)
    if np.asarray(p).dtype == np.uint8
    else np.round(np.clip(np.asarray(p, np.float32), 0, 1) * 255).astype(np.uint8)
  )
  lines = []
  for panels in rows:
    panels = [as_uint8(p) for p in panels]
    height = max(p.shape[0] for p in panels)
    panels = [
      np.repeat(np.repeat(p, height // p.shape[0], 0), height // p.shape[0], 1) for p in panels
    ]
    lines.append(np.concatenate(panels, axis=1))
  width = max(line.shape[1] for line in lines)
  lines = [
    np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
    for line in lines
  ]
  grid = np.concatenate(lines, axis=0)
  if not titles:
    return grid
  canvas = Image.new("RGB", (width, grid.shape[0] + 14), "white")
  canvas.paste(Image.fromarray(grid), (0, 14))
  draw = ImageDraw.Draw(canvas)
  column_width = width // len(titles)
  for k, title in enumerate(titles):
    draw.text((k * column_width + 3, 1), title, fill="black")
  return np.asarray(canvas)


def log_progress(step: int, num_steps: int, values: dict, batch_size: int) -> None:
  """The training log's line: the step, the loss terms, images/s and the ETA."""
  eta = (num_steps - step) * batch_size / max(values["images_per_sec"], 1e-9)
  names = (
    "loss",
    "recon",
    "prior_recon",
    "kl",
    "perceptual",
    "sample_perceptual",
    "sample_best",
    "sample_pairwise",
    "sample_texture",
  )
  shown = {k: values[k] for k in names if k in values}
  logging.info(
    "step %d/%d  %s  %.1f img/s  ETA %s",
    step,
    num_steps,
    format_terms(shown),
    values["images_per_sec"],
    format_duration(eta),
  )


def print_eval_summary(values: dict, step: int, num_images: int, data_config) -> None:
  """The table a training run ends with: the model against bicubic on the eval crops."""
  print(
    f"\nEvaluation at step {step} on {num_images} "
    f"{data_config.hr_size}px crops (x{data_config.scale}, RGB in [0,1], vs HR):"
  )
  print(f"  {'':8s} {'PSNR (dB)':>10s} {'SSIM':>8s}")
  print(f"  {'bicubic':8s} {values['bicubic_psnr']:10.2f} {values['bicubic_ssim']:8.4f}")
  print(f"  {'model':8s} {values['psnr']:10.2f} {values['ssim']:8.4f}")
  print(
    f"  {'gain':8s} {values['psnr'] - values['bicubic_psnr']:+10.2f} "
    f"{values['ssim'] - values['bicubic_ssim']:+8.4f}",
    flush=True,
  )
