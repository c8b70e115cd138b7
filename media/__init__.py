"""Floor 2, media primitives: video and audio IO, images, face detection and mesh, audio features,
AU proxies measured from landmarks, and the per-clip media processing that preprocess and generate share.

Imports `tbd_core` and `annotation` (the FACS vocabulary) only.
"""
