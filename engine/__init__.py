"""Evaluation engine: turns "score these prompts on these samples" into requests, keeps a server's
batch full, and never loses finished work (scheduler, cache, limits, ledger, evaluator)."""
