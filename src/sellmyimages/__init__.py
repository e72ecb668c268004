"""Sell My Images: sell AI-upscaled copies of your images."""
