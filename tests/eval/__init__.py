"""Tests of edge_vlm.eval: scorers against the official rules, readers, answer files, resume, the CLI."""
