"""What the diffusion nodes stand on: checkpoint loading, CLIP text encoding, sampling, VAE, LoRA.

Everything here imports torch; nothing on the light side (spec, graph, validation) imports this package.
"""
