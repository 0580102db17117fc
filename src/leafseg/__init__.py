"""leafseg: LEAF latent-diffusion segmentation (single reverse step, encoder feature distillation)."""

__version__ = "0.1.0"
