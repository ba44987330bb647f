"""VFDA: vicinal feature-statistics augmentation for federated 3D medical segmentation (Flower + MONAI).

Keep this package light: heavy libraries (torch, monai, flwr) are imported by the modules that need them.
See README.md for what follows the paper, what is reconstructed and how to run it.
"""
