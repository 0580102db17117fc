"""Networks: frozen mask autoencoders, the trainable image encoder, the denoiser, the projector and teachers."""
