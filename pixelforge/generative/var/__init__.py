"""VAR: the multi-scale residual VQ-VAE tokenizer, the next-scale-prediction transformer and its sampler."""
from .quantizer import MultiScaleQuantizer, phi_indices
from .sampling import VARSample, filter_logits_, sample
from .transformer import VAR, KVCache, block_causal_mask
from .vqvae import VQVAE

__all__ = ["VQVAE", "VAR", "MultiScaleQuantizer", "KVCache", "VARSample", "sample", "filter_logits_",
           "phi_indices", "block_causal_mask"]
