"""Draw: the conditioned video diffusion model, its Lightning training and the progressive sampler."""
