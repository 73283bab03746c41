"""Per-input configuration policy: a small network that picks (tokens, depth, width) for each image.

The policy reads the backbone's own patch embeddings (frozen, computed once and shared with the
backbone run that follows), mixes them with two Mixer-style blocks, pools, and has one categorical
head per axis. It is trained with REINFORCE against the frozen backbone::

    reward(x, a) = scale * quality(x, a) - lam * flops(a) / flops(full)

with ``quality`` = ``-CE`` or correctness (0/1), an EMA baseline and an entropy bonus. Because the
backbone is frozen, the quality of *every* action on every training image is computed once, up
front, with one ``forward_anytime`` pass per width (:func:`collect_outcomes`); policy training then
only indexes that table. FLOPs are counted once per configuration (:func:`configuration_flops`).

At inference (:class:`PolicyClassifier`) the policy picks a configuration per image and the batch
runs in one pass per chosen token count (:func:`run_mixed`): per-image depths (images leave the
batch after their last block) and widths inside the pass, so a batch of many different choices
costs a few backbone calls, not one per configuration.

:func:`evaluate_comparators` scores, with the same code and data: the full configuration, every
fixed configuration, confidence early exit (a threshold sweep, ``forward_early_exit``), the oracle
(cheapest configuration that is still correct; an upper bound) and learned policies.
"""

from .comparators import evaluate_comparators, flops_saved_at_parity, format_summary, plot_comparators, write_results
from .mixed import PolicyClassifier, PolicyOutput, run_from_patches, run_mixed
from .network import ConfigPolicy, MixerBlock, PolicyConfig, PolicyLogits, load_policy, save_policy
from .reinforce import (
    BASELINES,
    REWARDS,
    Outcomes,
    PolicyTrainConfig,
    TrainLog,
    collect_outcomes,
    patch_embeddings,
    reward_table,
    train_policy,
)
from .space import ActionSpace, configuration_flops, configuration_latency, writeout_flops

__all__ = [
    "BASELINES", "REWARDS", "ActionSpace", "ConfigPolicy", "MixerBlock", "Outcomes", "PolicyClassifier", "PolicyConfig",
    "PolicyLogits", "PolicyOutput", "PolicyTrainConfig", "TrainLog", "collect_outcomes", "configuration_flops",
    "configuration_latency", "evaluate_comparators", "flops_saved_at_parity", "format_summary", "load_policy",
    "patch_embeddings", "plot_comparators", "reward_table", "run_from_patches", "run_mixed", "save_policy",
    "train_policy", "write_results", "writeout_flops",
]
