"""Evaluation: metrics (and their registry), cost (FLOPs, timing, active parameters), configuration
sweeps and reports (plots, tables). Imports models, checkpoint and data only."""

from .cost import Timing, active_parameters, count_flops, machine_info, measure_gflops, measure_latency, time_call
from .metrics import ClassificationAccuracy, MetricAccumulator, get_metric, list_metrics, register_metric
from .reports import format_table, plot_pareto
from .sweep import SweepConfig, evaluate_grid, grid, mark_pareto, pareto_front, run_sweep, write_sweep

__all__ = [
    "ClassificationAccuracy", "MetricAccumulator", "SweepConfig", "Timing", "active_parameters", "count_flops",
    "evaluate_grid", "format_table", "get_metric", "grid", "list_metrics", "machine_info", "mark_pareto",
    "measure_gflops", "measure_latency", "pareto_front", "plot_pareto", "register_metric", "run_sweep", "time_call",
    "write_sweep",
]
