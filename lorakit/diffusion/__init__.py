"""Shared diffusion maths below the families: noise schedules, objectives, samplers' sigma schedules, latent
packing. Pure tensor functions; nothing here knows a config, a model or a family."""
