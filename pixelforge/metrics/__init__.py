"""Image quality metrics: PSNR/SSIM under the BasicSR protocol (``sr``)."""
from .sr import psnr, psnr_ssim, psnr_ssim_tensor, rgb_to_y, ssim, tensor_to_uint8

__all__ = ["psnr", "ssim", "psnr_ssim", "psnr_ssim_tensor", "rgb_to_y", "tensor_to_uint8"]
