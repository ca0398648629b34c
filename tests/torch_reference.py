"""The reference implementation's residual nets and iteration, in PyTorch.

An independent statement, in PyTorch, of the authors' nets (jcui1224/dual-MCMC
`nets.py`: `_Cifar10_netG`, `_Cifar10_netE`, `_Cifar10_netI`) and of one
iteration of their training loop (`authors_iteration`: the body of `fit` in
their `train.py`, statement by statement), used to generate the golden
fixtures of `tests/agreement_test.py` and `tests/golden_iteration_test.py`,
to write real `.pth` files in the import tests, and as the PyTorch side of
speed comparisons. It does not import the JAX library: the layouts below are
written from the authors' layer lists, not derived from `networks/`, so that
an error in one is not silently shared by the other.

This module needs PyTorch, which is an optional dependency of the project
(`pip install torch`); nothing in the library or in CI imports it.

State-dict layout: the key names `dual_mcmc_jax/import_torch` expects. For CIFAR-10
they are the authors' (their `_Cifar10_netG`, `_Cifar10_netE`,
`_Cifar10_netI`), so that their checkpoints, dicts {'epoch', 'netG', 'netE',
'netI', 'optG', 'optE', 'optI'} of state dicts, import as they are. The
authors' code has no CelebA-64 nets; other layouts extend the same scheme,
which is a guess: a checkpoint whose names differ is refused with an error
naming the first tensor that does not fit. With n generator up-blocks and m
EBM blocks (CIFAR-10: n = 3, m = 4):

* netG (`ResGenerator`): `lin_1.{weight,bias}` (Linear nz -> 16 * C0, viewed
  as [B, C0, 4, 4]); up-blocks `block2` ... `block{n+1}`, each with `bn_1`,
  `conv1`, `bn_2`, `conv2`, `sc` (1x1 conv after the upsampling); then
  `bn_{n+2}`, `conv{n+2}` (CIFAR-10: `bn_5`, `conv5`). Convs carry biases;
  BatchNorm layers hold `weight`, `bias`, `running_mean`, `running_var`,
  `num_batches_tracked`.
* netE (`ResEBM`): the start block `conv_1`, then `block2` ... `block{m}`,
  each with `conv1`, `conv2` and `sc` (absent on the CIFAR layout's last two
  blocks, whose shortcut is the identity); then `lin_{m+1}` (Linear nef -> 1;
  CIFAR-10: `lin_5`). No biases. Every layer goes through the old
  `torch.nn.utils.spectral_norm` API and stores `weight_orig`, `weight_u` and
  `weight_v`, e.g. `conv_1.conv1.weight_orig`, `block2.sc.weight_u`.
* netI (`ResInference`): `main`, an `nn.Sequential` of bias-free convs, each
  followed by a LeakyReLU, so the convs are `main.0`, `main.2`, `main.4`,
  ...; then the heads `conv51.{weight,bias}` (mu) and `conv52.{weight,bias}`
  (log-variance), 4x4 valid convs.

Tensors follow PyTorch conventions: images [B, C, H, W], latents
[B, nz, 1, 1] (a [B, nz] latent is accepted and viewed as such), conv
weights [out, in, kh, kw], linear weights [out, in].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

Tensor = torch.Tensor

# --------------------------------------------------------------------------
# Layouts (the authors' nets.py, generalised to other power-of-two sizes).
# --------------------------------------------------------------------------


def _log2(n: int) -> int:
  k = int(round(math.log2(n)))
  if 2**k != n or n < 8:
    raise ValueError(f'image size must be a power of two >= 8, got {n}')
  return k


def generator_widths(ngf: int, image_size: int, style: str) -> list[int]:
  """Channels at 4x4, 8x8, ..., image_size."""
  n_up = _log2(image_size) - 2
  if style == 'cifar':
    return [ngf] * (n_up + 1)
  return [max(ngf // 2**i, 1) for i in range(n_up + 1)]


def ebm_layout(nef: int, image_size: int,
               style: str) -> list[tuple[int, int, bool]]:
  """(in channels, out channels, downsample) per block; channels in = 3."""
  if style == 'cifar':
    outs = [(nef, True), (nef, True), (nef, False), (nef, False)]
  else:
    n = _log2(image_size) - 1  # Every block halves: image_size -> 2x2.
    outs = [(max(nef // 2**(n - 1 - i), 1), True) for i in range(n)]
  layout, cin = [], None
  for cout, down in outs:
    layout.append((cin, cout, down))
    cin = cout
  return layout


def inference_widths(nif: int, image_size: int, style: str) -> list[int]:
  """Channels of the convs `main.0`, `main.2`, ...; the last runs at 4x4."""
  n_down = _log2(image_size) - 2  # Stride-2 convs needed to reach 4x4.
  if style != 'cifar':
    n_down -= 1  # main.0 is already 4x4 stride 2.
  return [nif] + [nif * min(2**(i + 1), 8) for i in range(n_down)]


# --------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------


def reference_init_(module: nn.Module) -> None:
  """The reference's weights_init: Xavier-normal convs, BN scale ~ N(0, 1).

  Linear layers and conv biases keep PyTorch's defaults. For spectrally
  normalised layers the raw weight (`weight_orig`) is initialised.

  Args:
    module: one submodule (use with `net.apply(reference_init_)`).
  """
  if isinstance(module, nn.Conv2d):
    w = module.weight_orig if hasattr(module, 'weight_orig') else module.weight
    nn.init.xavier_normal_(w)
  elif isinstance(module, nn.BatchNorm2d):
    nn.init.normal_(module.weight, 0.0, 1.0)
    nn.init.zeros_(module.bias)


def _sn(layer: nn.Module, enabled: bool) -> nn.Module:
  # The old (parametrize-free) API: its state dict keys are weight_orig,
  # weight_u, weight_v, as in the authors' checkpoints.
  return nn.utils.spectral_norm(layer) if enabled else layer


def _up(x: Tensor) -> Tensor:
  return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)


class GenUpBlock(nn.Module):
  """BN-ReLU-up-conv3-BN-ReLU-conv3, plus up-conv1x1 shortcut."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.bn_1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
    self.bn_2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
    self.sc = nn.Conv2d(cin, cout, 1, 1, 0)

  def forward(self, x: Tensor) -> Tensor:
    h = self.conv1(_up(F.relu(self.bn_1(x))))
    h = self.conv2(F.relu(self.bn_2(h)))
    return h + self.sc(_up(x))


class ResGenerator(nn.Module):
  """G(z): linear to 4x4, residual up-blocks, BN-ReLU-conv3-tanh.

  Attributes as in the authors' `_Cifar10_netG`: `lin_1`, `block2` ...
  `block{n+1}`, `bn_{n+2}`, `conv{n+2}` for n up-blocks.
  """

  def __init__(self, nz: int, ngf: int, image_size: int = 32,
               style: str = 'cifar', num_channels: int = 3):
    super().__init__()
    widths = generator_widths(ngf, image_size, style)
    self.nz, self.c0 = nz, widths[0]
    self.n_blocks = len(widths) - 1
    self.lin_1 = nn.Linear(nz, 4 * 4 * widths[0])
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
      setattr(self, f'block{i + 2}', GenUpBlock(a, b))
    last = self.n_blocks + 2
    setattr(self, f'bn_{last}', nn.BatchNorm2d(widths[-1]))
    setattr(self, f'conv{last}', nn.Conv2d(widths[-1], num_channels, 3, 1, 1))
    self.apply(reference_init_)

  def forward(self, z: Tensor) -> Tensor:
    h = self.lin_1(z.reshape(z.shape[0], self.nz)).view(-1, self.c0, 4, 4)
    for i in range(self.n_blocks):
      h = getattr(self, f'block{i + 2}')(h)
    last = self.n_blocks + 2
    h = F.relu(getattr(self, f'bn_{last}')(h))
    return torch.tanh(getattr(self, f'conv{last}')(h))  # [B, C, H, W]


class EbmBlock(nn.Module):
  """EBM residual block; every conv bias-free and spectrally normalised."""

  def __init__(self, cin: int, cout: int, downsample: bool, first: bool,
               spectral_norm: bool = True):
    super().__init__()
    self.first, self.downsample = first, downsample
    self.conv1 = _sn(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), spectral_norm)
    self.conv2 = _sn(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                     spectral_norm)
    self.has_shortcut = first or downsample or cin != cout
    if self.has_shortcut:
      self.sc = _sn(nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
                    spectral_norm)

  def forward(self, x: Tensor) -> Tensor:
    h = x if self.first else F.relu(x)
    h = self.conv2(F.relu(self.conv1(h)))
    if self.downsample:
      h = F.avg_pool2d(h, 2)
    if self.first:  # Start block: pool first, then the 1x1 conv.
      s = self.sc(F.avg_pool2d(x, 2))
    elif self.has_shortcut:
      s = self.sc(x)
      if self.downsample:
        s = F.avg_pool2d(s, 2)
    else:
      s = x
    return h + s


class ResEBM(nn.Module):
  """E(x): residual blocks, ReLU, global average pool, linear -> energy.

  Attributes as in the authors' `_Cifar10_netE`: the start block `conv_1`,
  then `block2` ... `block{m}`, and `lin_{m+1}` for m blocks in all.
  """

  def __init__(self, nef: int, image_size: int = 32, style: str = 'cifar',
               num_channels: int = 3, spectral_norm: bool = True):
    super().__init__()
    layout = ebm_layout(nef, image_size, style)
    self.block_names = ['conv_1'] + [f'block{i + 1}'
                                     for i in range(1, len(layout))]
    for i, (name, (cin, cout, down)) in enumerate(
        zip(self.block_names, layout)):
      setattr(self, name, EbmBlock(num_channels if i == 0 else cin, cout,
                                   down, i == 0, spectral_norm))
    self.lin_name = f'lin_{len(layout) + 1}'
    setattr(self, self.lin_name,
            _sn(nn.Linear(layout[-1][1], 1, bias=False), spectral_norm))
    self.apply(reference_init_)

  def forward(self, x: Tensor) -> Tensor:
    h = x
    for name in self.block_names:
      h = getattr(self, name)(h)
    h = F.relu(h).mean(dim=(2, 3))  # [B, nef]
    return getattr(self, self.lin_name)(h).view(-1)  # [B]


class ResInference(nn.Module):
  """q(z|x): LReLU conv stack to 4x4, then 4x4 valid conv heads.

  Attributes as in the authors' `_Cifar10_netI`: `main` (convs at the even
  indices, LeakyReLUs between), `conv51` (mu) and `conv52` (log-variance).
  """

  def __init__(self, nz: int, nif: int, image_size: int = 32,
               style: str = 'cifar', num_channels: int = 3):
    super().__init__()
    widths = inference_widths(nif, image_size, style)
    if style == 'cifar':
      layers = [nn.Conv2d(num_channels, nif, 3, 1, 1, bias=False)]
    else:
      layers = [nn.Conv2d(num_channels, nif, 4, 2, 1, bias=False)]
    layers.append(nn.LeakyReLU(0.2))
    for a, b in zip(widths[:-1], widths[1:]):
      layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    self.main = nn.Sequential(*layers)
    self.conv51 = nn.Conv2d(widths[-1], nz, 4, 1, 0)
    self.conv52 = nn.Conv2d(widths[-1], nz, 4, 1, 0)
    self.apply(reference_init_)

  def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
    h = self.main(x)  # [B, 8 nif, 4, 4]
    return self.conv51(h), self.conv52(h)  # [B, nz, 1, 1] each


class SimpleGenerator(nn.Module):
  """The plain nets of the paper's Table 1: ConvT 1 -> 4, BN-ReLU-ConvT up."""

  def __init__(self, nz: int, ngf: int, image_size: int = 32,
               num_channels: int = 3):
    super().__init__()
    n_up = _log2(image_size) - 2
    layers = [nn.ConvTranspose2d(nz, ngf * 2**n_up, 4, 1, 0)]
    for i in range(n_up):
      feats = num_channels if i == n_up - 1 else ngf * 2**(n_up - 1 - i)
      layers += [nn.BatchNorm2d(ngf * 2**(n_up - i)), nn.ReLU(),
                 nn.ConvTranspose2d(ngf * 2**(n_up - i), feats, 4, 2, 1)]
    self.main = nn.Sequential(*layers)
    self.apply(reference_init_)

  def forward(self, z: Tensor) -> Tensor:
    return torch.tanh(self.main(_as_latent(z)))


class SimpleEBM(nn.Module):
  """Spectrally normalised stride-2 convs with LReLU, then a 4x4 valid conv."""

  def __init__(self, nef: int, image_size: int = 32, num_channels: int = 3):
    super().__init__()
    n_down = _log2(image_size) - 2
    layers, width = [], num_channels
    for i in range(n_down):
      layers += [_sn(nn.Conv2d(width, nef * 2**i, 4, 2, 1), True),
                 nn.LeakyReLU(0.2)]
      width = nef * 2**i
    layers.append(_sn(nn.Conv2d(width, 1, 4, 1, 0), True))
    self.main = nn.Sequential(*layers)
    self.apply(reference_init_)

  def forward(self, x: Tensor) -> Tensor:
    return self.main(x).reshape(x.shape[0])


class SimpleInference(nn.Module):
  """Stride-2 convs (no bias) with LReLU, then two 4x4 valid conv heads."""

  def __init__(self, nz: int, nif: int, image_size: int = 32,
               num_channels: int = 3):
    super().__init__()
    n_down = _log2(image_size) - 2
    layers, width = [], num_channels
    for i in range(n_down):
      layers += [nn.Conv2d(width, nif * 2**i, 4, 2, 1, bias=False),
                 nn.LeakyReLU(0.2)]
      width = nif * 2**i
    self.main = nn.Sequential(*layers)
    self.mu = nn.Conv2d(width, nz, 4, 1, 0)
    self.logvar = nn.Conv2d(width, nz, 4, 1, 0)
    self.apply(reference_init_)

  def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
    h = self.main(x)
    return self.mu(h), self.logvar(h)


def build_nets(nz: int, ngf: int, nef: int, nif: int, image_size: int = 32,
               style: str = 'cifar', num_channels: int = 3,
               arch: str = 'resnet') -> tuple[nn.Module, nn.Module, nn.Module]:
  """The three nets in train mode (the reference never switches them).

  `arch='simple'` gives the plain nets of the paper's Table 1 (used for the
  speed comparison; their layout is that of `networks/simple.py`).
  """
  if arch == 'simple':
    return (SimpleGenerator(nz, ngf, image_size, num_channels).train(),
            SimpleEBM(nef, image_size, num_channels).train(),
            SimpleInference(nz, nif, image_size, num_channels).train())
  return (ResGenerator(nz, ngf, image_size, style, num_channels).train(),
          ResEBM(nef, image_size, style, num_channels).train(),
          ResInference(nz, nif, image_size, style, num_channels).train())


# --------------------------------------------------------------------------
# The iteration's pieces (the authors' train.py).
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ReferenceArgs:
  """Hyper-parameters of one reference iteration (CIFAR-10 defaults)."""
  nz: int = 128
  x_steps: int = 30
  s_x: float = 0.5
  n_x: float = 0.001
  z_steps: int = 10
  s_z: float = 0.1
  n_z: float = 0.1
  sigma: float = 0.3
  prior_sigma: float = 1.0
  g_factor: float = 1.0
  s_factor: float = 50.0
  i_factor: float = 0.1
  second_x_chain: bool = True  # The reference's "fine_tune".
  energy_diff_limit: float = 1e4
  lr_e: float = 1e-4
  lr_g: float = 3e-4
  lr_i: float = 1e-4
  betas: tuple[float, float] = (0.0, 0.9)
  wd_e: float = 0.0
  wd_g: float = 5e-4
  wd_i: float = 5e-4

  @classmethod
  def from_config(cls, config) -> 'ReferenceArgs':
    """Reads the corresponding fields of an experiment ConfigDict."""
    o = config.optim
    return cls(
        nz=int(config.model.nz), x_steps=int(config.langevin_x.steps),
        s_x=float(config.langevin_x.step_size),
        n_x=float(config.langevin_x.noise),
        z_steps=int(config.langevin_z.steps),
        s_z=float(config.langevin_z.step_size),
        n_z=float(config.langevin_z.noise), sigma=float(config.loss.sigma),
        prior_sigma=float(config.loss.prior_sigma),
        g_factor=float(config.loss.g_factor),
        s_factor=float(config.loss.s_factor),
        i_factor=float(config.loss.i_factor),
        second_x_chain=bool(config.training.second_x_chain),
        energy_diff_limit=float(config.loss.energy_diff_limit),
        lr_e=float(o.lr_e), lr_g=float(o.lr_g), lr_i=float(o.lr_i),
        betas=(float(o.beta1), float(o.beta2)), wd_e=float(o.wd_e),
        wd_g=float(o.wd_g), wd_i=float(o.wd_i))


def make_optimizers(netG: nn.Module, netE: nn.Module, netI: nn.Module,
                    args: ReferenceArgs
                    ) -> dict[str, torch.optim.Optimizer]:
  """Adam, betas (0, 0.9), coupled L2 weight decay; keys 'G', 'E', 'I'."""
  adam = lambda net, lr, wd: torch.optim.Adam(  # pylint: disable=g-long-lambda
      net.parameters(), lr=lr, betas=args.betas, weight_decay=wd)
  return {'G': adam(netG, args.lr_g, args.wd_g),
          'E': adam(netE, args.lr_e, args.wd_e),
          'I': adam(netI, args.lr_i, args.wd_i)}


def _as_latent(z: Tensor) -> Tensor:
  return z.reshape(z.shape[0], -1, 1, 1)


def x_langevin_step(netE: nn.Module, x: Tensor, s: float, n: float,
                    noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
  """x <- x - s^2/2 * d sum_b E(x_b) / dx + n * noise.

  Args:
    netE: the EBM (train mode: its spectral norm runs one power iteration).
    x: current points, [B, C, H, W].
    s, n: step size and noise scale.
    noise: the standard-normal draw (zeros for a deterministic step); drawn
      here if None.

  Returns:
    (new x detached, the energy gradient used).
  """
  x = x.detach().requires_grad_(True)
  grad, = torch.autograd.grad(netE(x).sum(), x)
  if noise is None:
    noise = torch.randn_like(x)
  return (x - 0.5 * s * s * grad + n * noise).detach(), grad


def z_langevin_step(netG: nn.Module, z: Tensor, x: Tensor, s: float, n: float,
                    sigma: float, prior_sigma: float,
                    noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
  """z <- z - s^2/2 (d ||G(z)-x||^2/dz / sigma^2 + z / prior_sigma^2) + n eps.

  The authors' form: the reconstruction term has no 1/2, the prior term's
  gradient is z / prior_sigma^2 (so it is ||z||^2 / (2 prior_sigma^2)).

  Args:
    netG: the generator (train mode, batch-statistics BatchNorm).
    z: current latents, [B, nz, 1, 1] or [B, nz].
    x: the data they explain, [B, C, H, W].
    s, n: step size and noise scale.
    sigma, prior_sigma: observation noise and prior scale.
    noise: the standard-normal draw, or None to draw it here.

  Returns:
    (new z detached, the gradient used), both shaped like `z`.
  """
  z = z.detach().requires_grad_(True)
  rec = torch.sum((netG(_as_latent(z)) - x)**2)
  grad_rec, = torch.autograd.grad(rec, z)
  grad = grad_rec / sigma**2 + z.detach() / prior_sigma**2
  if noise is None:
    noise = torch.randn_like(z)
  return (z.detach() - 0.5 * s * s * grad + n * noise).detach(), grad


def gaussian_nll(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
  """Per-example NLL without the log(2 pi) constant, 1e-6 added to the var."""
  z, mu, logvar = (t.reshape(t.shape[0], -1) for t in (z, mu, logvar))
  return (0.5 * logvar.sum(1) +
          0.5 * ((z - mu)**2 / (1e-6 + torch.exp(logvar))).sum(1))


def generator_loss(netG: nn.Module, x: Tensor, z: Tensor, z1: Tensor,
                   x1: Tensor, g_factor: float, s_factor: float,
                   x0: Tensor | None = None) -> Tensor:
  """Gfactor ||G(z1) - x||^2 / B + Sfactor ||x0 - x1||^2 / B, x0 = G(z).

  Args:
    netG: the generator.
    x: data, [B, C, H, W]; z: the prior latents of the x-chain.
    z1: z-revised latents of x; x1: x-revised samples (constants).
    g_factor, s_factor: term weights.
    x0: G(z) from the start of the x-chain, still attached to the graph (the
      reference keeps it); recomputed here when None (same values).

  Returns:
    The scalar loss.
  """
  b = x.shape[0]
  if x0 is None:
    x0 = netG(_as_latent(z))
  rec = torch.sum((netG(_as_latent(z1.detach())) - x)**2) / b
  teach = torch.sum((x0 - x1.detach())**2) / b
  return g_factor * rec + s_factor * teach


def inference_loss(netI: nn.Module, x: Tensor, z1: Tensor, x1: Tensor,
                   z: Tensor, g_factor: float, i_factor: float) -> Tensor:
  """Gfactor mean NLL(z1 | I(x)) + Ifactor mean NLL(z | I(x1))."""
  mu, logvar = netI(x)
  mu_s, logvar_s = netI(x1.detach())
  return (g_factor * gaussian_nll(z1.detach(), mu, logvar).mean() +
          i_factor * gaussian_nll(z.detach(), mu_s, logvar_s).mean())


def ebm_loss(netE: nn.Module, x: Tensor, x_neg: Tensor,
             temperature: float) -> tuple[Tensor, Tensor]:
  """(mean E(x) - mean E(x_neg)) / temperature; returns (loss, difference).

  E(x) runs before E(x_neg): each pass runs one power iteration, so the
  order decides which `u` each pass is normalised with.
  """
  diff = netE(x).mean() - netE(x_neg.detach()).mean()
  return diff / temperature, diff


# --------------------------------------------------------------------------
# One iteration of the authors' training loop, line by line.
# --------------------------------------------------------------------------

# The Gaussian draws of one iteration, by the names `dual_mcmc_jax/noise.py`
# gives them: 'prior' [B, nz], 'reparam' [B, nz], 'z_chain' [Tz, B, nz],
# 'x_chain' and 'x_chain_negative' [Tx, B, C, H, W]. None: drawn here.
Draws = dict[str, Tensor]


def _draw(draws: Draws | None, name: str, like: Tensor,
          index: int | None = None) -> Tensor:
  if draws is None:
    return torch.randn_like(like)
  d = draws[name] if index is None else draws[name][index]
  return d.reshape(like.shape).to(like.dtype)


def authors_langevin_x(netE: nn.Module, x: Tensor, args: ReferenceArgs,
                       draws: Draws | None, name: str) -> Tensor:
  """train.py, `langevin_x`: the x-revision, one EBM pass per step."""
  x = x.clone().detach()
  x.requires_grad = True
  for i in range(args.x_steps):
    energy = netE(x).sum()
    grad = torch.autograd.grad(energy, x)[0]
    x.data = x.data - 0.5 * args.s_x * args.s_x * grad
    x.data = x.data + args.n_x * _draw(draws, name, x, i)  # use_noise
  return x.detach()


def authors_langevin_z(netG: nn.Module, z: Tensor, x: Tensor,
                       args: ReferenceArgs, draws: Draws | None) -> Tensor:
  """train.py, `langevin_z`: the z-revision (MSELoss(reduction='sum'))."""
  z = z.clone().detach()
  z.requires_grad = True
  for i in range(args.z_steps):
    err_recon = torch.sum((netG(z) - x)**2)
    grad = torch.autograd.grad(err_recon, z)[0]
    z.data = z.data - 0.5 * args.s_z * args.s_z * (
        grad / args.sigma / args.sigma + 1.0 /
        (args.prior_sigma * args.prior_sigma) * z.data) + args.n_z * _draw(
            draws, 'z_chain', z, i)
  return z.detach()


def _grads(net: nn.Module) -> dict[str, Tensor]:
  return {k: p.grad.detach().clone() for k, p in net.named_parameters()
          if p.grad is not None}


@dataclasses.dataclass
class AuthorsIteration:
  """What one iteration of the authors' loop computed, stage by stage.

  Attributes:
    x1, z1, x_neg: the x-revised samples, the z-revised latents and the
      EBM's negatives (the second chain's samples).
    losses: errG, errI, errE_loss and errE (as 'loss_g', 'loss_i',
      'loss_e', 'energy_diff').
    grads: per net ('G', 'I', 'E') the gradient of its loss, by parameter.
  """
  x1: Tensor
  z1: Tensor
  x_neg: Tensor
  losses: dict[str, float]
  grads: dict[str, dict[str, Tensor]]


def authors_iteration(netG: nn.Module, netE: nn.Module, netI: nn.Module,
                      optimizers: dict[str, torch.optim.Optimizer], x: Tensor,
                      args: ReferenceArgs, draws: Draws | None = None
                      ) -> AuthorsIteration:
  """The body of the training loop of train.py's `fit` (jcui1224/dual-MCMC).

  Statement for statement, in the authors' order; each comment quotes the
  statement it stands for. Differences of form only: the Gaussian draws
  can be passed in (`draws`), and nothing is logged.

  Args:
    netG, netE, netI: the nets, in train mode.
    optimizers: {'G', 'E', 'I'} Adam optimisers (`make_optimizers`).
    x: the data batch, [B, C, H, W].
    args: the hyper-parameters (`fine_tune` is `args.second_x_chain`).
    draws: the iteration's Gaussian draws (`Draws`), or None to draw them.

  Returns:
    The iteration's samples, losses and gradients; the nets and optimisers
    are updated in place.
  """
  b = x.shape[0]
  opt_g, opt_e, opt_i = optimizers['G'], optimizers['E'], optimizers['I']
  # "Train G": optG.zero_grad(); noise...normal_(); samples = netG(noiseV)
  opt_g.zero_grad()
  noise = _draw(draws, 'prior', torch.empty(b, args.nz, 1, 1))
  samples = netG(noise)
  # infer_z_mu_true, infer_z_log_sigma_true = netI(x)
  mu, log_sigma = netI(x)
  # z_input = reparametrize(...): eps.mul(std).add_(mu), std = exp(0.5 lv)
  z_input = _draw(draws, 'reparam', mu).mul(
      torch.exp(log_sigma.mul(0.5))).add_(mu)
  # z_input_corr = langevin_z(z_input, x, netG, args)
  z_corr = authors_langevin_z(netG, z_input, x, args, draws)
  # samples_corr = langevin_x(samples, netE, args)
  samples_corr = authors_langevin_x(netE, samples, args, draws, 'x_chain')
  # errRecon = mse(netG(z_input_corr.detach()), x) / batch_size
  err_recon = torch.sum((netG(z_corr.detach()) - x)**2) / b
  # errSample = mse(samples, samples_corr) / batch_size
  err_sample = torch.sum((samples - samples_corr)**2) / b
  # errG = errRecon + args.Sfactor * errSample; errG.backward(); optG.step()
  err_g = err_recon + args.s_factor * err_sample
  err_g.backward()
  grads = {'G': _grads(netG)}
  opt_g.step()
  # with t.no_grad(): et = netE(x).squeeze().mean()  (a logging pass; in
  # train mode it still runs one spectral-norm power iteration)
  with torch.no_grad():
    netE(x)
  # "Train I": optI.zero_grad(); neg_log_q_z, errLatent, errI
  opt_i.zero_grad()
  neg_log_q_z = torch.mean(gaussian_nll(z_corr, mu, log_sigma))
  mu_gen, log_sigma_gen = netI(samples_corr)
  err_latent = torch.mean(gaussian_nll(noise, mu_gen, log_sigma_gen))
  err_i = neg_log_q_z + args.i_factor * err_latent
  err_i.backward()
  grads['I'] = _grads(netI)
  opt_i.step()
  # "Train E": optE.zero_grad(); Eng_T = netE(x) (before the second chain)
  opt_e.zero_grad()
  e_t = torch.mean(netE(x).squeeze())
  # samples = netG(noiseV); if args.fine_tune: samples = langevin_x(...)
  samples = netG(noise)
  if args.second_x_chain:
    samples = authors_langevin_x(netE, samples, args, draws,
                                 'x_chain_negative')
  # Eng_F = netE(samples.detach()); errE = E_T - E_F; errE_loss = errE / T
  e_f = torch.mean(netE(samples.detach()).squeeze())
  err_e = e_t - e_f
  err_e_loss = err_e / (args.n_x / args.s_x)**2
  err_e_loss.backward()
  grads['E'] = _grads(netE)
  opt_e.step()
  return AuthorsIteration(
      x1=samples_corr, z1=z_corr, x_neg=samples.detach(),
      losses={'loss_g': err_g.item(), 'loss_i': err_i.item(),
              'loss_e': err_e_loss.item(), 'energy_diff': err_e.item()},
      grads=grads)


def reference_train_step(netG: nn.Module, netE: nn.Module, netI: nn.Module,
                         optimizers: dict[str, torch.optim.Optimizer] |
                         Sequence[torch.optim.Optimizer], x: Tensor,
                         args: ReferenceArgs) -> dict[str, Any]:
  """One iteration of the authors' loop (`authors_iteration`), as metrics.

  Args:
    netG, netE, netI: the nets, in train mode.
    optimizers: {'G', 'E', 'I'} (or a (G, E, I) sequence) of Adam optimisers,
      e.g. from `make_optimizers`.
    x: data batch, [B, C, H, W] in [-1, 1], on the nets' device.
    args: the iteration's hyper-parameters.

  Returns:
    The losses as Python floats, and 'healthy' (False where the reference
    stops: a NaN loss or |mean E(x) - mean E(x1')| > energy_diff_limit).
  """
  if not isinstance(optimizers, dict):
    optimizers = dict(zip('GEI', optimizers))
  losses = authors_iteration(netG, netE, netI, optimizers, x, args).losses
  healthy = (all(math.isfinite(v) for v in losses.values()) and
             abs(losses['energy_diff']) <= args.energy_diff_limit)
  return {**losses, 'healthy': healthy}
