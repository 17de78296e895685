"""dualstep's benchmark suite: `python -m benchmarks` (docs, "Performance")."""
