"""Adaptation at inference: pick a configuration for a budget (budget) or per input (policy, with its
comparators: fixed configurations, confidence early exit, the oracle). May import every library
package except cli."""

__all__ = ["budget", "policy"]
