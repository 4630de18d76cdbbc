"""The learner: losses (pure functions), log-probs, the DeepSpeed engine, weight export."""
