"""LeRobot integration: demo datasets, DTW pairing, the OT pair dataset, alignment policies and training.

Importing this package is cheap; the submodules import torch and lerobot.
"""
