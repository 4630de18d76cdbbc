"""Rollout: the vLLM engine wrapper, rollout records and the batch builders of each algorithm."""
