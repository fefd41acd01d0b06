"""The values that travel on MODEL, CLIP and VAE edges, and the model's noise schedule.

A MODEL is a UNet wrapped as a denoiser over sigmas (Karras et al. 2022), with ComfyUI's conventions:
the SD beta schedule gives 1000 discrete sigmas; a sigma is mapped to the nearest discrete timestep in
log space for the UNet; epsilon and v-prediction outputs are turned into a denoised latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from flowrun.diffusion.configs import ModelConfig
from flowrun.diffusion.hypernetwork import attention_inputs_patched
from flowrun.diffusion.lazy import deferred, replace
from flowrun.diffusion.unet_inputs import NONE, UNetInputs
from flowrun.diffusion.unet_patches import Pass, attached


PREDICTION_TYPES = ("epsilon", "v_prediction", "x0")


class ModelSampling:
    """Discrete DDPM schedule as sigmas (sqrt((1 - alphas_cumprod) / alphas_cumprod)); with `zsnr`, rescaled
    to zero terminal SNR (Lin et al. 2023). The model predicts the noise (epsilon), v, or the clean latent (x0)."""

    flow = False  # a rectified flow (flowrun.diffusion.flow_sampling) is sampled with the flow forms of samplers

    def __init__(self, prediction_type: str = "epsilon", linear_start: float = 0.00085, linear_end: float = 0.012,
                 timesteps: int = 1000, zsnr: bool = False):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.linear_start, self.linear_end, self.timesteps, self.zsnr = linear_start, linear_end, timesteps, zsnr
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = _zero_terminal_snr(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self.sigma_data = 1.0

    def with_prediction(self, prediction_type: str, zsnr: bool = False) -> "ModelSampling":
        """The same beta schedule, read with another prediction type (ModelSamplingDiscrete); "lcm": a
        latent consistency model's (LcmSampling)."""
        if prediction_type == "lcm":
            return LcmSampling(self.linear_start, self.linear_end, self.timesteps, zsnr)
        return ModelSampling(prediction_type, self.linear_start, self.linear_end, self.timesteps, zsnr)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest discrete timestep (in log-sigma distance)."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating log-sigma linearly."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1))
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (output.ndim - 1))
        if self.prediction_type == "v_prediction":
            sd2 = self.sigma_data ** 2
            return x * sd2 / (sigma ** 2 + sd2) - output * sigma * self.sigma_data / (sigma ** 2 + sd2) ** 0.5
        if self.prediction_type == "x0":
            return output
        return x - output * sigma

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False):
        """The starting point: pure noise scaled to sqrt(1 + sigma^2) at full denoise, else latent + noise*sigma."""
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return noise + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """The sampler's result as the latent it stands for (unchanged here; a flow rescales it)."""
        return latent

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        first, top = float(sigmas[0]), float(self.sigma_max)
        return math.isclose(top, first, rel_tol=1e-05) or first > top


class LcmSampling(ModelSampling):
    """A latent consistency model (Luo et al. 2023): distilled to 50 of the 1000 timesteps (every 20th,
    ending at 999), predicting noise that is turned into the clean latent by LCM's boundary condition
    (sigma_data 0.5, timestep scaled by 10), as ComfyUI's ModelSamplingDiscreteDistilled with LCM."""

    original_timesteps = 50

    def __init__(self, linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000,
                 zsnr: bool = False):
        super().__init__("epsilon", linear_start, linear_end, timesteps, zsnr)
        self.prediction_type = "lcm"
        self.skip = timesteps // self.original_timesteps
        keep = [timesteps - 1 - i * self.skip for i in range(self.original_timesteps)][::-1]
        self.sigmas = self.sigmas[keep]
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip + (self.skip - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep.float().to(self.log_sigmas.device) - (self.skip - 1)) / self.skip
        t = torch.clamp(t, min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shape = sigma.shape[:1] + (1,) * (output.ndim - 1)
        scaled = self.timestep(sigma).view(shape) * 10.0
        sigma = sigma.view(shape)
        x0 = x - output * sigma
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x

    def with_prediction(self, prediction_type: str, zsnr: bool = False) -> "ModelSampling":
        return ModelSampling.with_prediction(self, prediction_type, zsnr)


def _zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last timestep is (almost) pure noise, as ComfyUI's zsnr does."""
    root = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas = root ** 2
    alphas[-1] = 4.8973451890853435e-08  # ComfyUI's floor, so the last sigma stays finite
    return ((1 - alphas) / alphas) ** 0.5


@dataclass
class Patch:
    """A weight change for one parameter: weight * keep + delta(weight) * strength. A LoRA adds a low-rank delta
    (keep 1); a merge keeps `ratio` of the weight and adds the other model's weight (ComfyUI's
    strength_model and strength_patch)."""

    target: str  # parameter name in the module
    delta: Any  # delta(current weight, float32) -> the full-size delta at strength 1, computed lazily
    strength: float
    keep: float = 1.0


@dataclass
class DiffusionModel:
    """A MODEL value: the UNet (built on first use when given as a lazy.Deferred), its schedule, and LoRA
    patches applied while it runs. `dtype`: what the UNet's weights hold and compute in."""

    unet: Any = deferred()
    sampling: ModelSampling
    config: ModelConfig
    fingerprint: str
    patches: tuple[Patch, ...] = ()
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    # replaces uncond + (cond - uncond) * cfg: f(cond, uncond, cfg, x, sigma) -> denoised (RescaleCFG)
    cfg_function: Any = None
    # change the inputs of the attentions' key and value projections: .apply(0 key / 1 value, x) -> x
    # (hypernetworks, flowrun.diffusion.hypernetwork), in order
    attention_patches: tuple = ()
    # attached to the UNet for each forward pass (flowrun.diffusion.unet_patches: FreeU, DeepShrink, ...)
    unet_patches: tuple = ()
    # applied in order to the guided result, f(PostCfg) -> denoised (flowrun.diffusion.post_cfg: PAG, SAG)
    post_cfg_functions: tuple = ()
    # (mean, std, scale) per latent channel where the model expects normalised latents (Playground v2.5)
    latent_format: tuple | None = None
    # f(sigma, noise mask, model, the walk's sigmas) -> the mask for this step (DifferentialDiffusion)
    denoise_mask_function: Any = None

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def latent_scale(self) -> float:
        return float(self.config.vae.get("scaling_factor", 0.18215))

    def latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        """A VAE latent as the UNet sees it (ComfyUI's process_latent_in)."""
        if self.latent_format is None:
            return latent * self.latent_scale
        mean, std, scale = (torch.tensor(v, dtype=latent.dtype, device=latent.device).view(1, -1, 1, 1)
                            for v in self.latent_format)
        return (latent - mean) * scale / std

    def latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        """The UNet's latent back as the VAE's (process_latent_out)."""
        if self.latent_format is None:
            return latent / self.latent_scale
        mean, std, scale = (torch.tensor(v, dtype=latent.dtype, device=latent.device).view(1, -1, 1, 1)
                            for v in self.latent_format)
        return latent * std / scale + mean

    def with_patches(self, patches: list[Patch]) -> "DiffusionModel":
        return replace(self, patches=self.patches + tuple(patches))

    def with_cfg_function(self, fn) -> "DiffusionModel":
        """The same model whose guidance combines cond and uncond with `fn` (the last one set wins, as in
        ComfyUI); the model it came from is unchanged."""
        return replace(self, cfg_function=fn)

    def with_attention_patch(self, patch) -> "DiffusionModel":
        """The same model whose attentions' key and value inputs also go through `patch`."""
        return replace(self, attention_patches=self.attention_patches + (patch,))

    def with_unet_patch(self, patch) -> "DiffusionModel":
        """The same model with one more patch inside its forward pass (after those it has)."""
        return replace(self, unet_patches=self.unet_patches + (patch,))

    def with_denoise_mask_function(self, fn) -> "DiffusionModel":
        """The same model whose sampler changes the noise mask per step with `fn` (the last one set wins)."""
        return replace(self, denoise_mask_function=fn)

    def with_post_cfg_function(self, fn) -> "DiffusionModel":
        """The same model with one more function applied after guidance (after those it has)."""
        return replace(self, post_cfg_functions=self.post_cfg_functions + (fn,))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                 added: dict[str, torch.Tensor] | None = None, *, extra: tuple = (),
                 info: Pass | None = None, inputs: UNetInputs | None = None) -> torch.Tensor:
        """Denoised latent for input x at noise level sigma (one forward pass), with the model's UNet
        patches and `extra` ones (a post-cfg function's perturbation) attached for this pass only;
        `inputs`: the conditioning's extra channels, ControlNet, class labels and patches (unet_inputs.py)."""
        inputs = inputs or NONE
        xc = self.sampling.calculate_input(sigma, x)
        t = self.sampling.timestep(sigma).float()
        if added is not None:
            added = {k: v.to(x.device) for k, v in added.items()}
        context = context.to(x.device)
        kwargs: dict = {}
        if inputs.control is not None:  # control models compute in their own precision (float32)
            residuals = inputs.control.residuals(xc, t, sigma, context, added) or {}
            kwargs.update({k: _cast(v, self.dtype) for k, v in residuals.items()})
        if added is not None:
            added = {k: v.to(self.dtype) for k, v in added.items()}
        context = context.to(self.dtype)
        if inputs.class_labels is not None:
            kwargs["class_labels"] = inputs.class_labels.to(x.device, self.dtype)
        if inputs.concat is not None:
            xc = torch.cat([xc, inputs.concat.to(xc.device, xc.dtype)], dim=1)
        if inputs.reference_latents:
            kwargs["ref_latents"] = [r.to(x.device, self.dtype) for r in inputs.reference_latents]
        with attention_inputs_patched(self.unet, self.attention_patches), \
                attached(self.unet, self.unet_patches + tuple(inputs.patches) + tuple(extra), info or Pass(sigma)):
            out = self.unet(xc.to(self.dtype), t, encoder_hidden_states=context,
                            added_cond_kwargs=added, return_dict=False, **kwargs)[0]
        return self.sampling.calculate_denoised(sigma, out.float(), x)


def _cast(value, dtype: torch.dtype):
    """ControlNet residuals (a tensor, or a list of them) in the UNet's precision."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


@dataclass
class TextEncoder:
    """A CLIP value: the tokenizer, one or two text models, which layer to read, and LoRA patches."""

    tokenizer: Any
    models: list[Any] = deferred()  # SD1/SD2: [clip]; SDXL: [clip_l, clip_g]; built on first use
    config: ModelConfig
    fingerprint: str
    layer_idx: int | None = None  # None: the family's default layer; -1 last, -2 penultimate, ...
    patches: tuple[tuple[int, Patch], ...] = ()  # (model index, patch)

    @property
    def family(self) -> str:
        return self.config.family

    def with_layer(self, layer_idx: int) -> "TextEncoder":
        return replace(self, layer_idx=layer_idx)

    def with_patches(self, patches: list[tuple[int, Patch]]) -> "TextEncoder":
        return replace(self, patches=self.patches + tuple(patches))


@dataclass
class Vae:
    """A VAE value: the autoencoder (built on first use when given as a lazy.Deferred) and its latent scale."""

    model: Any = deferred()
    config: ModelConfig
    fingerprint: str
    extra: dict = field(default_factory=dict)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.vae.get("block_out_channels", [0, 0, 0, 0])) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.config.vae.get("latent_channels", 4))
