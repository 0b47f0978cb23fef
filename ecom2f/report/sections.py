"""The report's markdown sections, each a function of :class:`ecom2f.report.evidence.Evidence`.

One unit throughout: PQ, mIoU and mask AP in %, differences in PQ points with their paired-bootstrap
95% interval, costs in GFLOPs per image (mean, and the spread over images as the standard deviation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecom2f.config import Config
from ecom2f.report.comparisons import oracle_beats_fixed, oracle_over_gates, oracle_vs_fixed
from ecom2f.report.evidence import Evidence, depth_shares, mean_depth_by_scene
from ecom2f.report.text import ci_text, gate_sentence, gflops, markdown_table, pct, points, saving_text, verdict

__all__ = [
    "checks", "depth_section", "estimates_section", "headline", "oracle_table", "overview", "scenes_section",
    "sweep_section", "variants_table",
]


def _row(evidence: Evidence, name: str) -> pd.Series:
    return evidence.summary.set_index("variant").loc[name]


def _how_chosen(evidence: Evidence, name: str, kind: str) -> str:
    if kind == "fixed":
        return "full depth (baseline)" if name == evidence.full else "fixed depth"
    if kind == "oracle":
        return "oracle (needs every depth)"
    meta = evidence.gate_meta.get(evidence.merged.get(name, [name])[0], {})
    budgets = ", ".join(f"{evidence.gate_meta.get(n, {}).get('budget', '?')}" for n in evidence.merged.get(name, [name]))
    unit = meta.get("budget_unit", "layers")
    return f"gate, beta {meta.get('beta', '?')}, budget <= {budgets} {unit}" if meta else "gate"


def headline(evidence: Evidence) -> str:
    """The official README's table, one row per gate and per fixed depth, the full depth first."""
    grouped = evidence.per_image.groupby("variant")[["encoder_gflops", "total_gflops"]]
    spread = pd.concat({"mean": grouped.mean(), "std": grouped.std(ddof=0)}, axis=1).swaplevel(axis=1)
    order = [evidence.full, *evidence.gates, *(["oracle"] if "oracle" in evidence.versus.index else []),
             *reversed(evidence.fixed[:-1])]
    rows = []
    for name in order:
        row, kind = _row(evidence, name), _row(evidence, name)["kind"]
        versus = evidence.versus.loc[name] if name in evidence.versus.index else None
        cost = spread.loc[name]
        rows.append({
            "model": f"`{name}`", "how the depth is chosen": _how_chosen(evidence, name, kind), "PQ": pct(row["pq"]),
            "mIoU": pct(row.get("miou")), "AP": pct(row.get("mask_ap")),
            "total GFLOPs": f"{gflops(cost[('total_gflops', 'mean')])} ± {gflops(cost[('total_gflops', 'std')])}",
            "encoder GFLOPs": f"{gflops(cost[('encoder_gflops', 'mean')])} ± {gflops(cost[('encoder_gflops', 'std')])}",
            "mean layers": f"{row['mean_layers']:.2f}",
            "ms/image": "-" if kind == "oracle" else f"{1000 * row['seconds_per_image']:.1f}",
            "PQ vs fixed-depth curve": "-" if versus is None else ci_text(*versus[["vs_curve", "vs_curve_low", "vs_curve_high"]]),
            "PQ vs full depth": "-" if versus is None else ci_text(*versus[["vs_full", "vs_full_low", "vs_full_high"]]),
            "encoder GFLOPs saved at matched PQ": "-" if versus is None or kind == "oracle" else saving_text(versus),
        })
    notes = ("PQ, mIoU and AP in %; GFLOPs per image as mean ± standard deviation over the validation images; "
             "the two PQ differences are in PQ points with their paired-bootstrap 95% interval over images "
             "(1,000 resamples, seeded). *vs fixed-depth curve*: against the best mix of fixed depths at the same "
             "mean encoder GFLOPs (sending a share of the images to one fixed depth and the rest to another: "
             "straight lines between the fixed depths, a dip bridged); *saved at matched PQ*: the encoder "
             "GFLOPs at which the fixed-depth curve reaches the gate's PQ, minus the gate's (in brackets: share of "
             "the full depth's encoder GFLOPs). The oracle sends each image to its best depth, which takes every "
             "depth's result: a ceiling, not a model.")
    notes += (" ms/image: the model stage's time per image on this evaluation's device (none for the oracle, "
              "which is not one network).")
    merged = [f"`{label}`" for label, names in evidence.merged.items() if len(names) > 1]
    if merged:
        notes += (f" Budgets whose gates chose the same depth for every validation image are one row: "
                  f"{', '.join(merged)}.")
    sentences = [gate_sentence(name, evidence.versus.loc[name]) for name in evidence.gates]
    return "\n".join([markdown_table(pd.DataFrame(rows)), "", notes, "", *[f"- {s}" for s in sentences]])


def _matched_saving(versus: pd.Series) -> str:
    """The paper's headline quantity as a clause: encoder GFLOPs saved at matched PQ."""
    if not np.isfinite(versus["matched_gflops"]):
        return "no fixed depth reaches its PQ, so its saving at matched PQ is not defined"
    return (f"at matched PQ (the cost at which the fixed-depth curve reaches its PQ) it saves "
            f"{gflops(versus['saved_gflops'])} encoder GFLOPs per image ({100 * versus['saved_share']:+.0f}% of the "
            "full depth's encoder GFLOPs; negative: it costs more)")


def _mix(counts: pd.Series | None) -> str:
    """`` (64 cluttered, 64 simple scenes)`` from scene kind -> images; empty without scene kinds."""
    if counts is None or not len(counts):
        return ""
    return f" ({counts.get('cluttered', 0)} cluttered, {counts.get('simple', 0)} simple scenes)"


def _by_scene(evidence: Evidence, gate: str) -> str:
    """`` It chose 3.39 layers on cluttered scenes and 1.77 on simple ones.`` (empty without scene kinds)."""
    depth = mean_depth_by_scene(evidence)
    if depth is None or gate not in depth.index or not {"cluttered", "simple"} <= set(depth.columns):
        return ""
    return (f" It chose {depth.loc[gate, 'cluttered']:.2f} layers on average on cluttered scenes and "
            f"{depth.loc[gate, 'simple']:.2f} on simple ones.")


def overview(config: Config, evidence: Evidence) -> str:
    """The plain-language opening: the model, what the gates achieved, the encoder's share, the savings."""
    model, data = config.model, config.data
    pd_ = model.pixel_decoder
    full = _row(evidence, evidence.full)
    share = full["mean_encoder_gflops"] / full["mean_total_gflops"]
    if data.synthetic is not None:
        val = evidence.scenes["scene"].value_counts() if evidence.scenes is not None else None
        train = evidence.train_scene_counts
        what = (f"synthetic shapes (`ecom2f.data.synthetic`, not COCO): {data.synthetic.num_train} training "
                f"images{_mix(train)} and {int(full['images'])} validation images{_mix(val)}, at "
                f"{data.synthetic.image_size} px")
    else:
        what = f"`{data.val}` ({int(full['images'])} validation images)"
    lines = [(f"A small Mask2Former ({model.backbone.name} backbone, a deformable encoder of {pd_.encoder_layers} "
              f"layers of width {pd_.conv_dim} on {len(pd_.in_features)} levels, {model.decoder.num_queries} queries) "
              f"whose encoder stops early per image, on {what}. At full depth ({evidence.full}) the encoder is "
              f"**{100 * share:.0f}%** of the model's {gflops(full['mean_total_gflops'])} GFLOPs per image "
              f"({gflops(full['mean_encoder_gflops'])} GFLOPs), and PQ is {pct(full['pq'])}.")]
    if evidence.gates:
        best = max(evidence.gates, key=lambda n: evidence.versus.loc[n, "vs_curve"])
        gate, versus = _row(evidence, best), evidence.versus.loc[best]
        saved = lambda column: 100 * (1 - gate[column] / full[column])
        lines.append(
            f"The best gate, `{best}`, reaches PQ {pct(gate['pq'])} at {gate['mean_layers']:.2f} mean layers: "
            f"{verdict(versus)}; against the full depth "
            f"{ci_text(versus['vs_full'], versus['vs_full_low'], versus['vs_full_high'])} PQ. Against the full depth "
            f"it saves {saved('mean_encoder_gflops'):.0f}% of the encoder GFLOPs, {saved('mean_total_gflops'):.0f}% of "
            f"the total GFLOPs and {saved('seconds_per_image'):.0f}% of the wall-clock time per image (this "
            f"evaluation's device, batch {config.evaluation.batch_size}); {_matched_saving(versus)}."
            + _by_scene(evidence, best))
    if "oracle" in evidence.versus.index:
        oracle = _row(evidence, "oracle")
        lines.append(f"The oracle (every image at its best depth; it needs every depth's result) reaches PQ "
                     f"{pct(oracle['pq'])} at {oracle['mean_layers']:.2f} mean layers, "
                     f"{ci_text(*evidence.versus.loc['oracle', ['vs_curve', 'vs_curve_low', 'vs_curve_high']])} "
                     "PQ over the fixed-depth curve: the room a gate has.")
    return "\n\n".join(lines)


def checks(evidence: Evidence) -> str:
    """The trade-off's three claims, each answered yes or no with its numbers."""
    lines = []
    above = [n for n in evidence.gates if evidence.versus.loc[n, "vs_curve_low"] > 0]
    lines.append(f"- A gate above the fixed-depth curve at its mean cost, 95% CI excluding zero: "
                 f"**{'yes' if above else 'no'}**" + (f" ({', '.join(f'`{n}`' for n in above)})." if above else "."))
    if "oracle" in evidence.versus.index:
        over_gates = oracle_over_gates(evidence.summary)
        over_fixed = oracle_beats_fixed(oracle_vs_fixed(evidence.summary))
        both = over_fixed and bool((over_gates > 0).all())
        detail = ", ".join(f"`{n}` {points(100 * v)}" for n, v in over_gates.items())
        lines.append(f"- The oracle above the fixed depths and above every gate at equal cost: **{'yes' if both else 'no'}**"
                     f" (oracle curve minus gate at the gate's cost: {detail or 'no gate'}).")
    if evidence.scene_gain is not None:
        gain = evidence.scene_gain
        deeper = gain.loc["cluttered - simple", "low"] > 0
        gains_on_clutter = gain.loc["cluttered", "low"] > 0
        lines.append(
            f"- Deeper fixed exits better on cluttered scenes than on simple ones (the gain of {evidence.full} over "
            f"{evidence.fixed[0]}, cluttered minus simple, 95% CI above zero): **{'yes' if deeper else 'no'}**: "
            f"cluttered {ci_text(*gain.loc['cluttered', ['gain', 'low', 'high']])}, simple "
            f"{ci_text(*gain.loc['simple', ['gain', 'low', 'high']])}, difference "
            f"{ci_text(*gain.loc['cluttered - simple', ['gain', 'low', 'high']])} PQ"
            + ("." if gains_on_clutter or not deeper else
               f"; but {evidence.full} is not better than {evidence.fixed[0]} on cluttered scenes themselves "
               "(95% CI not above zero): the difference is that depth costs simple scenes more."))
    return "\n".join(lines)


def oracle_table(evidence: Evidence) -> str:
    comparison = oracle_vs_fixed(evidence.summary)
    if comparison.empty:
        return ""
    shown = pd.DataFrame({"fixed depth": comparison["variant"], "mean layers": comparison["mean_layers"].map("{:.2f}".format),
                          "fixed PQ": comparison["fixed_pq"].map(pct),
                          "oracle PQ at equal cost": comparison["oracle_pq_at_equal_cost"].map(pct),
                          "oracle - fixed": (100 * comparison["margin"]).map(points)})
    beats = oracle_beats_fixed(comparison)
    return (f"Oracle vs each fixed depth at equal mean encoder GFLOPs (oracle beats every deeper fixed depth: "
            f"**{'yes' if beats else 'no'}**):\n\n" + markdown_table(shown))


def depth_section(evidence: Evidence) -> str:
    shares = depth_shares(evidence)
    if shares.empty:
        return ""
    shown = shares.map(lambda v: f"{v:.0f}")
    shown.columns = [f"depth {k}" for k in shares.columns]
    outside = [str(k) for k in evidence.depths if k not in evidence.gate_exits]
    note = (f" Depth {', '.join(outside)} is a fixed depth only, not one of the gate's exits (`model.gate.exits`)."
            if outside else "")
    return ("Share of images (%) at each depth: the ideal exit of each training image of the depth table per beta "
            f"(step 3's labels), and the depth each gate chose on the validation images.{note}\n\n"
            + markdown_table(shown.reset_index(names="")))


def scenes_section(evidence: Evidence, table: pd.DataFrame) -> str:
    """Fixed depths and gates on simple vs cluttered validation scenes (``table``: PQ in % per variant
    and scene kind, :func:`ecom2f.report.scenes.scene_table`)."""
    shown = table.map(lambda v: f"{v:.1f}")
    counts = evidence.scenes["scene"].value_counts()
    shown.columns = [f"{c} ({counts.get(c, len(evidence.scenes))} images)" if c != "all" else "all" for c in table.columns]
    lines = ["Dataset PQ (%) on each kind of validation scene:", "", markdown_table(shown.reset_index(names="variant"))]
    depth = mean_depth_by_scene(evidence)
    if depth is not None and len(depth):
        cells = "; ".join(f"`{name}`: " + ", ".join(f"{kind} {value:.2f}" for kind, value in row.items())
                          for name, row in depth.iterrows())
        lines += ["", f"Mean depth each gate chose, by scene kind: {cells}."]
    if evidence.scene_gain is not None:
        gain = evidence.scene_gain
        lines += ["", (f"Going from {evidence.fixed[0]} to {evidence.full} gains "
                       f"{ci_text(*gain.loc['cluttered', ['gain', 'low', 'high']])} PQ on cluttered scenes and "
                       f"{ci_text(*gain.loc['simple', ['gain', 'low', 'high']])} on simple ones (difference "
                       f"{ci_text(*gain.loc['cluttered - simple', ['gain', 'low', 'high']])}; 95% intervals).")]
    return "\n".join(lines)


def sweep_section(evidence: Evidence, cost: str) -> str:
    """The beta sweep: what each beta asks of the depth table's images, computed in milliseconds."""
    sweep = evidence.sweep
    exits = [c for c in sweep.columns if c.startswith("exit_")]
    shown = pd.DataFrame({"beta": sweep["beta"].map("{:g}".format), "mean layers": sweep["mean_layers"].map("{:.2f}".format),
                          "table PQ": sweep["table_pq"].map("{:.1f}".format),
                          **{f"exit {c[5:]} (%)": sweep[c].map("{:.0f}".format) for c in exits}})
    return (f"Labels for {len(sweep)} betas from the stored depth table (cost: {cost}); each took at most "
            f"{1000 * sweep['seconds'].max():.0f} ms, so choosing beta needs no retraining until a gate is trained for "
            "it. *table PQ*: mean per-image PQ (%) of the depth table's training images at their ideal exits, what a "
            "perfect gate for that beta would realise on them.\n\n" + markdown_table(shown))


def estimates_section(evidence: Evidence) -> str:
    """Step 3's table-only estimate of each gate next to what the same statistic measures on validation."""
    gates = evidence.summary[evidence.summary["kind"] == "gate"]
    if gates.empty or "estimate_pq" not in gates:
        return ""
    shown = pd.DataFrame({"gate": gates["variant"].map("`{}`".format),
                          "estimate (held-out training images)": gates["estimate_pq"].map(pct),
                          "validation": gates["mean_image_pq"].map(pct),
                          "validation - estimate": (100 * (gates["mean_image_pq"] - gates["estimate_pq"])).map(points)})
    return ("Step 3 chose each gate by its *mean per-image PQ* on held-out images of the depth table, which the parent "
            "was trained on; the same statistic on the validation images shows how far that estimate carries to new "
            "images (dataset PQ, the headline's, is a different average).\n\n" + markdown_table(shown))


def variants_table(evidence: Evidence) -> str:
    """Every variant with PQ, things / stuff PQ and mean per-image PQ, in %."""
    summary = evidence.summary[evidence.summary["kind"] != "oracle_curve"]
    shown = pd.DataFrame({"variant": summary["variant"].map("`{}`".format), "kind": summary["kind"],
                          "PQ": summary["pq"].map(pct), "PQ things": summary["pq_things"].map(pct),
                          "PQ stuff": summary["pq_stuff"].map(pct), "mean image PQ": summary["mean_image_pq"].map(pct),
                          "mean layers": summary["mean_layers"].map("{:.2f}".format)})
    return markdown_table(shown)
