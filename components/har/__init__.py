"""RT-HARE / IMFE: real-time action recognition with a TV-L1 optical-flow pipeline vs. the IMFE
single-shot motion-feature extractor (arXiv 2409.05662). See README.md.

Kept light: no heavy imports here (torch, cv2 and av are imported by the modules that use them).
"""
