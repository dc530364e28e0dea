"""Image quality metrics: PSNR/SSIM under the BasicSR protocol (``sr``) and the RRFormer protocol (``reflection``)."""
from .reflection import score_pair, to_uint8_truncated
from .sr import psnr, psnr_ssim, psnr_ssim_tensor, rgb_to_y, ssim, tensor_to_uint8

__all__ = [
           "psnr",
           "psnr_ssim",
           "psnr_ssim_tensor",
           "rgb_to_y",
           "score_pair",
           "ssim",
           "tensor_to_uint8",
           "to_uint8_truncated",
]
