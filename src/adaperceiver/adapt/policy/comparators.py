"""The policy against its comparators, scored with the same code and data: the full configuration, every
fixed configuration, confidence early exit, the oracle; tables, plot and summary."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...evaluation.cost import flop_counter, time_call
from ...evaluation.reports import new_figure, save_figure, write_csv
from ...evaluation.sweep import pareto_front
from ...models.adaperceiver import AdaPerceiverClassifier
from ...models.setting import Setting
from ...models.util import eval_mode, module_device
from .mixed import PolicyClassifier
from .network import ConfigPolicy
from .reinforce import Outcomes
from .space import _example_input, writeout_flops


def _stream_ms(fn, xs: Tensor, batch_size: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the wall time to process ``xs`` in batches of ``batch_size``, in ms per image.

    ``fn`` gets ready input tensors (no data loading inside the timing); one untimed warm-up pass.
    Timed with the one timer (:func:`~adaperceiver.evaluation.cost.time_call`, which synchronises
    CUDA), so every method of the comparison is measured the same way.
    """
    chunks = list(xs.split(batch_size))

    def stream() -> None:
        for c in chunks:
            fn(c)

    return time_call(stream, xs.shape[0], warmup=1, repeats=repeats, device=xs.device).median_ms / xs.shape[0]


def flops_saved_at_parity(rows: Sequence[Mapping[str, Any]], full_acc: float, full_gflops: float,
                          tolerance_pp: float = 0.1) -> dict[str, Any] | None:
    """Cheapest row with ``acc1 >= full_acc - tolerance_pp`` and the FLOPs it saves (in %)."""
    ok = [r for r in rows if r["acc1"] >= full_acc - tolerance_pp - 1e-9]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["gflops"])
    return {"method": best["method"], "setting": best["setting"], "acc1": best["acc1"], "gflops": best["gflops"],
            "flops_saved_pct": 100.0 * (1.0 - best["gflops"] / full_gflops)}


@torch.no_grad()
def evaluate_comparators(model: AdaPerceiverClassifier, outcomes: Outcomes, cost: Tensor,
                         policies: Mapping[str, ConfigPolicy] | None = None, taus: Sequence[float] = (),
                         latency_batch_sizes: Sequence[int] = (1,), latency_images: int = 64,
                         latency_repeats: int = 3, eval_batch_size: int = 256,
                         dtype: torch.dtype | str | None = None, compile: bool = False) -> dict[str, Any]:
    """Score every method on the held-out ``outcomes``; see the module docstring.

    Each row: ``method, setting, acc1 (%), gflops (mean per image, including the policy network),
    latency_ms_b{b}`` (ms per image over the first ``latency_images`` held-out images in batches of
    ``b``, the whole method timed: patch embedding, policy, grouped backbone runs) and ``deployable``.
    The oracle is not deployable (it needs the label); its latency is the mean latency of the fixed
    configurations it picks, weighted by how often it picks them.

    With ``dtype`` and/or ``compile`` every method is timed on ``model.for_inference(dtype,
    compile)``: fixed configurations as their slim (compiled) modules, early exit and the policies'
    backbone passes on its eager copy in ``dtype`` (their shapes depend on the data, so they are not
    compiled; with ``compile`` the policy network is).
    Accuracies stay those of ``model`` as given.
    """
    with eval_mode(model):
        space = outcomes.space
        dev = next(model.parameters()).device
        xs = outcomes.images[:latency_images].to(dev)
        bss = tuple(int(b) for b in latency_batch_sizes)
        n = len(outcomes)
        gcost = cost / 1e9
        rows: list[dict[str, Any]] = []

        fast = model.for_inference(dtype, compile) if dtype is not None or compile else None
        timed = fast.model if fast is not None else model  # what early exit and the policies run on
        cast = fast.dtype if fast is not None else xs.dtype

        def lat(fn) -> dict[str, float]:
            return {f"latency_ms_b{b}": _stream_ms(fn, xs.to(cast), b, latency_repeats) for b in bss}

        # every fixed configuration (the full one included)
        fixed_lat: dict[tuple[int, ...], dict[str, float]] = {}
        for s in space:
            ix = space.index(s)
            fixed_lat[ix] = lat(lambda c, s=s: (fast or model)(c, **s.as_dict()))
            rows.append({"method": "fixed", "setting": "/".join(map(str, s)), **s.as_dict(),
                         "acc1": 100.0 * int(outcomes.correct[(slice(None), *ix)].sum()) / n,
                         "gflops": float(gcost[ix]), **fixed_lat[ix], "deployable": True})
        full = next(r for r in rows if Setting.of(r) == space.full)
        full = {**full, "method": "full"}
        rows.insert(0, full)

        # oracle: per image, the cheapest configuration that is correct (the cheapest overall if none is)
        flat_cost = cost.flatten()
        correct = outcomes.correct.flatten(1)
        masked = torch.where(correct, flat_cost.expand(n, -1), torch.full_like(flat_cost, float("inf")).expand(n, -1))
        choice = torch.where(correct.any(1), masked.argmin(1), flat_cost.argmin().expand(n))
        counts = torch.bincount(choice, minlength=flat_cost.numel()).double()
        oracle_lat = {key: sum(counts[c].item() * fixed_lat[tuple(int(v) for v in torch.unravel_index(torch.tensor(c), space.shape))][key]
                               for c in counts.nonzero().flatten().tolist()) / n for key in (f"latency_ms_b{b}" for b in bss)}
        rows.append({"method": "oracle", "setting": "cheapest correct", "acc1": 100.0 * int(correct.any(1).sum()) / n,
                     "gflops": float(flat_cost[choice].mean() / 1e9), **oracle_lat, "deployable": False})

        # confidence early exit at the full value of every other axis
        t_full, _, *rest = space.full
        at_full = {name: v for name, v in zip(Setting._fields, space.full) if name != "depth"}
        write = writeout_flops(model, t_full)
        depth_cost = {d: float(cost[(-1, j, *(-1 for _ in rest))]) for j, d in enumerate(space.depths)}
        for tau in taus:
            exit_depths, hits = [], 0
            for s in range(0, n, eval_batch_size):
                x = outcomes.images[s:s + eval_batch_size].to(dev)
                out = model.forward_early_exit(x, tau, **at_full)
                hits += int((out.logits.argmax(-1).cpu() == outcomes.labels[s:s + eval_batch_size]).sum())
                exit_depths.append(out.exit_depth.cpu())
            ed = torch.cat(exit_depths)
            flops = torch.tensor([depth_cost[int(d)] + (int(d) - 1) * write for d in ed.tolist()], dtype=torch.float64)
            rows.append({"method": "early_exit", "setting": f"tau={tau:g}", "tau": tau, "acc1": 100.0 * hits / n,
                         "gflops": float(flops.mean() / 1e9), "mean_exit_depth": float(ed.float().mean()),
                         **lat(lambda c, tau=tau: timed.forward_early_exit(c, tau, **at_full)),
                         "deployable": True})

        # learned policies
        for name, policy in (policies or {}).items():
            if module_device(policy) != dev:  # the caller's policy is not moved
                raise ValueError(f"policy {name!r} is on {module_device(policy)}, the model on {dev}: move it first")
            with eval_mode(policy):
                runner = PolicyClassifier(model, policy)
                x_pol = _example_input(model)
                with torch.no_grad():
                    p1 = model.patch_embed(x_pol)[0]
                with torch.enable_grad(), flop_counter() as counter:
                    policy(p1)
                pol_flops = int(counter.get_total_flops())
                acts, hits = [], 0
                for s in range(0, n, eval_batch_size):
                    out = runner(outcomes.images[s:s + eval_batch_size].to(dev))
                    hits += int((out.logits.argmax(-1).cpu() == outcomes.labels[s:s + eval_batch_size]).sum())
                    acts.append(out.actions.cpu())
                a = torch.cat(acts)
                if fast is not None:  # the same policy on the timed copy of the backbone
                    runner = PolicyClassifier(timed, copy.deepcopy(policy).to(fast.dtype), compile_policy=compile)
                # the table says what the backbone gets for these actions; the run above must agree
                table_hits = int(outcomes.correct[(torch.arange(n), *a.unbind(1))].sum())
                chosen = cost[a.unbind(1)]
                rows.append({"method": "policy", "setting": name, "acc1": 100.0 * hits / n,
                             "gflops": float((chosen.mean() + pol_flops) / 1e9), "policy_gflops": pol_flops / 1e9,
                             "table_acc1": 100.0 * table_hits / n,
                             **{f"mean_{name}": float(torch.tensor(values)[a[:, k]].float().mean())
                                for k, (name, values) in enumerate(zip(Setting._fields, space.axes))},
                             "distinct_configs": int(len({tuple(r) for r in a.tolist()})),
                             **lat(runner), "deployable": True})

        summary: dict[str, Any] = {"num_images": n, "full": {"acc1": full["acc1"], "gflops": full["gflops"]},
                                   "latency_images": int(xs.shape[0]), "latency_batch_sizes": list(bss)}
        for method in ("fixed", "early_exit", "policy", "oracle"):
            summary[f"parity_{method}"] = flops_saved_at_parity([r for r in rows if r["method"] == method],
                                                                full["acc1"], full["gflops"])
        return {"rows": rows, "summary": summary}


def write_results(result: Mapping[str, Any], out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """``comparators.csv``, ``comparators.json`` and ``accuracy_vs_gflops.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    write_csv(rows, out / "comparators.csv")
    (out / "comparators.json").write_text(json.dumps({**dict(meta or {}), **result}, indent=1) + "\n")
    plot_comparators(rows, out / "accuracy_vs_gflops.png")


def plot_comparators(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    fig = new_figure(figsize=(7, 5))
    ax = fig.subplots()
    fixed = [r for r in rows if r["method"] == "fixed"]
    ax.scatter([r["gflops"] for r in fixed], [r["acc1"] for r in fixed], s=10, color="0.7", label="fixed configurations")
    flags = pareto_front([(r["gflops"], r["acc1"]) for r in fixed])
    front = sorted((r for r, f in zip(fixed, flags) if f), key=lambda r: r["gflops"])
    ax.plot([r["gflops"] for r in front], [r["acc1"] for r in front], "-", color="black", lw=1.2, label="fixed-configuration front")
    style = {"early_exit": ("C0", "s", "confidence early exit"), "policy": ("C3", "*", "learned policy"),
             "oracle": ("C2", "D", "oracle (not deployable)"), "full": ("black", "o", "full")}
    series = []
    for method, (col, mk, label) in style.items():
        pts = [r for r in rows if r["method"] == method]
        if method != "policy":
            series.append((pts, col, mk, label, method == "early_exit"))
            continue
        # policies named "<family> lam=<x>" (e.g. one family per baseline) get one line each
        families = sorted({r["setting"].rsplit("lam=", 1)[0].strip() for r in pts})
        for i, fam in enumerate(families):
            fpts = [r for r in pts if r["setting"].rsplit("lam=", 1)[0].strip() == fam]
            series.append((fpts, f"C{3 + i}", "*" if i == 0 else "P", f"{label} {fam}".strip(), True))
    for pts, col, mk, label, line in series:
        pts = sorted(pts, key=lambda r: r["gflops"])
        if not pts:
            continue
        ax.plot([r["gflops"] for r in pts], [r["acc1"] for r in pts], marker=mk, color=col, ms=9 if mk == "*" else 6,
                lw=0.8 if line else 0, label=label)
    for r in rows:
        if r["method"] == "policy":
            ax.annotate(r["setting"].rsplit(" ", 1)[-1], (r["gflops"], r["acc1"]), fontsize=6, xytext=(4, -9),
                        textcoords="offset points")
    full = next((r for r in rows if r["method"] == "full"), None)
    if full:
        ax.axhspan(full["acc1"] - 0.1, full["acc1"] + 0.1, color="C1", alpha=0.15, label="full ± 0.1 pp")
        deployable = [r["acc1"] for r in rows if r["method"] != "oracle"]
        lo, hi = max(min(deployable), full["acc1"] - 15) - 0.3, max(deployable) + 0.6
        ax.set_ylim(lo, hi)
        for r in rows:  # an oracle far above the rest would squash the plot: pin it to the top edge
            if r["method"] == "oracle" and r["acc1"] > hi:
                ax.annotate(f"oracle {r['acc1']:.2f}% (above)", (r["gflops"], hi), xytext=(0, -14), fontsize=7,
                            textcoords="offset points", ha="left", arrowprops=dict(arrowstyle="->", color="C2"))
    ax.set_xlabel("GFLOPs per image (policy network included)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def format_summary(result: Mapping[str, Any]) -> str:
    s = result["summary"]
    lines = [f"full: {s['full']['acc1']:.2f}% at {s['full']['gflops']:.4f} GFLOPs ({s['num_images']} images)"]
    for method in ("fixed", "early_exit", "policy", "oracle"):
        p = s.get(f"parity_{method}")
        if p is None:
            lines.append(f"{method:>10}: no point within 0.1 pp of full")
        else:
            lines.append(f"{method:>10}: {p['setting']}: {p['acc1']:.2f}% at {p['gflops']:.4f} GFLOPs "
                         f"({-p['flops_saved_pct']:+.1f}% FLOPs vs full)")
    return "\n".join(lines)


__all__ = ["evaluate_comparators", "flops_saved_at_parity", "format_summary", "plot_comparators", "write_results"]
