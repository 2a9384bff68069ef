"""Reproductions of the paper's experiments, as resumable pipelines."""
