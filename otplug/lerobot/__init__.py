"""LeRobot integration: datasets (and small synthetic ones for tests), DTW pairing, the OT pair dataset, alignment
policies and training. The embedded demo that builds on it lives in :mod:`otplug.demo`.

Importing this package is cheap; the submodules import torch and lerobot.
"""
