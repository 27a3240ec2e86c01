"""Helpers shared by the test modules (probes, toy data, `train.py` runners)."""
