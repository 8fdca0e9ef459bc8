"""Images, video and audio for multimodal models: loading (load.py) and the per-family plugins."""
