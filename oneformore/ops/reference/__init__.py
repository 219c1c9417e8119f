"""Plain eager-PyTorch references of every fused op: the ground truth of the tests, the baseline of the
benchmarks, and the "eager" mode of the detectors."""
