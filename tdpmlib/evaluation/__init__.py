"""The evaluation: image metrics (PSNR, SSIM), perceptual metrics (LPIPS), sample metrics (SWD, FID, KID,
memorisation) and paired statistics. Imports nothing else from tdpmlib."""
