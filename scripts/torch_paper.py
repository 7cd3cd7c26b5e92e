"""The paper's train step in PyTorch: the peer the JAX paper step is timed against.

Its VAE as `percvae_jax.models.vae.SeedVAE` (conv 3->16->32->64, stride 2, on the LR;
a 256-d global latent; transposed convs back to the HR size; sigmoid), the frozen
VGG16 to relu3_3 with the package's ImageNet weights, and the paper's objective
(0.001 * summed pixel MSE + summed KL + 0.8 * mean relu3_3 MSE), Adam at 5e-3.

Timed by both benchmarks (scripts/benchmark_common.py's `time_torch_paper`):

    from torch_paper import make_paper_step
    step = make_paper_step(vgg_weights, hr_size=128, scale=2, device="cuda",
                           dtype="bfloat16", channels_last=True, compile=True)
    loss = step(lr_nchw, hr_nchw)   # one Adam step; returns the loss tensor

`vgg_weights` is the package's VGG16 dict ({conv1_1: {kernel HWIO, bias}, ...}, numpy),
as `percvae_jax.pretrained.load_vgg16_params` returns it; only the convs up to
relu3_3 are read. bfloat16 is autocast (float32 parameters, bfloat16 convolutions),
as `config.train.compute_dtype="bfloat16"` is in JAX.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG16 convs up to relu3_3, and where the 2x2 max-pools go (before conv2_1, conv3_1).
RELU3_3_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")


class SeedVAE(nn.Module):
  """The paper's VAE on an LR input of hr_size / scale px."""

  def __init__(self, hr_size: int, scale: int = 2, latent_dim: int = 256):
    super().__init__()
    conv = lambda i, o: nn.Conv2d(i, o, 3, stride=2, padding=1)
    self.encoder = nn.Sequential(
      conv(3, 16), nn.ReLU(), conv(16, 32), nn.ReLU(), conv(32, 64), nn.ReLU(), nn.Flatten()
    )
    lr_side = hr_size // scale
    features = 64 * (-(-lr_side // 8)) ** 2  # three stride-2 convs, padded: ceil(side / 8).
    self.mu = nn.Linear(features, latent_dim)
    self.logvar = nn.Linear(features, latent_dim)
    self.side = hr_size // 8
    self.dense = nn.Linear(latent_dim, 64 * self.side**2)
    up = lambda i, o: nn.ConvTranspose2d(i, o, 3, stride=2, padding=1, output_padding=1)
    self.decoder = nn.Sequential(up(64, 32), nn.ReLU(), up(32, 16), nn.ReLU(), up(16, 3))

  def forward(self, lr):
    h = self.encoder(lr)
    mu, logvar = self.mu(h), self.logvar(h).clamp(-12.0, 8.0)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    x = torch.relu(self.dense(z)).view(-1, 64, self.side, self.side)
    return torch.sigmoid(self.decoder(x).float()), mu.float(), logvar.float()


def vgg16_to_relu3_3(weights) -> nn.Sequential:
  """torchvision's vgg16().features[:16] (to relu3_3), frozen, from the package's
  HWIO weights."""
  layers, channels = [], 3
  for name in RELU3_3_CONVS:
    if name.endswith("_1") and name != "conv1_1":
      layers.append(nn.MaxPool2d(2, 2))
    kernel = np.asarray(weights[name]["kernel"], np.float32)
    bias = np.asarray(weights[name]["bias"], np.float32)
    conv = nn.Conv2d(channels, bias.shape[0], 3, padding=1)
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))  # HWIO -> OIHW
      conv.bias.copy_(torch.from_numpy(bias.copy()))
    layers += [conv, nn.ReLU()]
    channels = conv.out_channels
  return nn.Sequential(*layers).eval().requires_grad_(False)


class PaperLoss(nn.Module):
  """The paper's objective for one batch: (loss, sr)."""

  def __init__(self, model: SeedVAE, vgg: nn.Module):
    super().__init__()
    self.model, self.vgg = model, vgg
    self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

  def forward(self, lr, hr):
    sr, mu, logvar = self.model(lr)
    kl = 0.5 * torch.sum(mu**2 + logvar.exp() - 1.0 - logvar)
    with torch.no_grad():
      target = self.vgg((hr - self.mean) / self.std).float()
    features = self.vgg((sr - self.mean) / self.std).float()
    perceptual = torch.mean((features - target) ** 2)
    return 0.001 * torch.sum((sr - hr) ** 2) + kl + 0.8 * perceptual


def make_paper_step(
  vgg_weights,
  hr_size: int = 128,
  scale: int = 2,
  device: str = "cpu",
  dtype: str = "float32",
  channels_last: bool = False,
  compile: bool = False,
  seed: int = 0,
):
  """`step(lr, hr) -> loss`: one Adam step of the paper's model on NCHW float32 [0,1]
  batches already on `device`. `dtype` "bfloat16" autocasts the forward pass;
  `channels_last` keeps activations NHWC; `compile` runs the forward and backward
  through `torch.compile` (the optimizer is CUDA's fused Adam where it exists)."""
  torch.manual_seed(seed)
  loss_module = PaperLoss(SeedVAE(hr_size, scale), vgg16_to_relu3_3(vgg_weights)).to(device)
  if channels_last:
    loss_module = loss_module.to(memory_format=torch.channels_last)
  fused = {"fused": True} if str(device).startswith("cuda") else {}
  optimizer = torch.optim.Adam(loss_module.model.parameters(), lr=5e-3, **fused)
  forward = torch.compile(loss_module, dynamic=False) if compile else loss_module
  device_type = torch.device(device).type
  autocast_dtype = {"bfloat16": torch.bfloat16, "float32": None}[dtype]

  def step(lr, hr):
    if channels_last:
      lr = lr.contiguous(memory_format=torch.channels_last)
      hr = hr.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(
      device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
      loss = forward(lr, hr)
    loss.backward()
    optimizer.step()
    return loss

  return step
