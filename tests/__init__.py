"""Tests of the dual-MCMC teaching reimplementation (run with pytest)."""
