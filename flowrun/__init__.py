"""flowrun: reproducible latent-diffusion workflows from declarative YAML."""

__version__ = "0.1.0"
