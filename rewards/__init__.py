"""Rewards: math answers graded with math-verify and learned reward models, behind one
interface (``rewards.base.RewardFunction``), routed per sample by ``rewards.router``.

No Ray here (``actors/reward.py`` wraps the router), and no heavy import at package import:
the grader process imports this package too.
"""
