"""How ``make bench`` shows its results: the speedup figure, ``summary.html`` and the console summary."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if abs(v) >= 1e6 or (v and abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v))


def speedup_figure(summary: dict):
    import pandas as pd

    from ie_helpers.plots import metric_bars

    rows = [{"comparison": "training\n(project vs TRL defaults)", "speedup": summary["train_speedup"]},
            {"comparison": "generation\n(batched vs unbatched)", "speedup": summary["gen_speedup"]},
            {"comparison": "encoder LoRA\n(project vs Trainer defaults)", "speedup": summary["encoder_speedup"]}]
    rows += [{"comparison": f"lever: {lv['lever']}", "speedup": lv["speedup_vs_baseline"]}
             for lv in summary.get("levers", [])]
    fig = metric_bars(pd.DataFrame(rows), x="comparison", y="speedup", lo=None, hi=None,
                      title=f"Speedups on {summary['device']}")
    ax = fig.axes[0]
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f×", fontsize="small")
    ax.set_ylabel("speedup (×, tokens/s ratio)")
    fig.set_size_inches(max(5.5, 1.4 * len(rows)), 3.8)
    return fig


def _micro_batch_text(summary: dict) -> str:
    micro, batch = summary.get("micro_batch") or summary["batch_size"], summary["batch_size"]
    return f"{micro} of each batch of {batch}" + (" (gradients accumulated)" if micro < batch else "")


def summary_html(summary: dict, png: bytes) -> str:
    rows = [("device", summary["device"]), ("model", summary["model"]),
            ("training precision (fast / baseline)", f"{summary['precision']} / {summary['baseline_precision']}"),
            ("gradient checkpointing (fast path)", "on" if summary.get("gradient_checkpointing") else "off"),
            ("rows per forward/backward pass (fast path)", _micro_batch_text(summary)),
            ("train tokens/s (fast path)", summary["train_tokens_per_s"]),
            ("train tokens/s (plain TRL defaults)", summary["baseline_train_tokens_per_s"]),
            ("baseline steps timed", f"{summary.get('baseline_steps')} of {summary['steps']}"
                                     + (" (capped: --baseline-max-s)" if summary.get("baseline_capped") else "")),
            ("train speedup", summary["train_speedup"]),
            ("final loss (fast / baseline)", f"{_fmt(summary['final_loss_fast'], 5)} / "
                                             f"{_fmt(summary['final_loss_baseline'], 5)}"),
            ("mean loss over the epoch (fast / baseline)", f"{_fmt(summary['mean_loss_fast'], 5)} / "
                                                           f"{_fmt(summary['mean_loss_baseline'], 5)}"),
            ("loss curve max |diff| (step-aligned)", summary["loss_curve_max_abs_diff"]),
            ("generation tokens/s (batched)", summary["gen_tokens_per_s"]),
            ("generation tokens/s (unbatched)", summary["baseline_gen_tokens_per_s"]),
            ("generation speedup", summary["gen_speedup"]),
            (f"greedy match rate ({summary['greedy_match_dtype']})", summary["greedy_match_rate"]),
            ("encoder tokens/s (fast path, LoRA token classification)", summary["encoder_tokens_per_s"]),
            ("encoder tokens/s (HF Trainer defaults)", summary["baseline_encoder_tokens_per_s"]),
            ("encoder speedup", summary["encoder_speedup"])]
    lever = (summary.get("encoder") or {}).get("fast_dropout_lever")
    if lever and not lever.get("skipped"):
        rows += [(f"encoder tokens/s with fast_dropout={lever['fast_dropout']} (the lever alone)",
                  lever["tokens_per_s"]),
                 ("encoder: MaskDropout's masks vs nn.Dropout's (speed ratio)", lever["fast_dropout_gain"])]
    if summary.get("greedy_match_rate_fp32") is not None:
        rows.append(("greedy match rate (fp32 check)", summary["greedy_match_rate_fp32"]))
    rows += [("FLOPs per training token", summary["flops_per_token"]),
             ("peak FLOP/s", summary["peak_flops"]),
             ("fraction of peak (fast path)", summary["fraction_of_peak"])]
    if "mfu" in summary:
        rows.append(("MFU", summary["mfu"]))
    rows.append(("wall time (s)", summary["wall_seconds"]))
    body = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    lever_rows = "\n".join(
        f"<tr><td>{html.escape(lv['lever'])}</td><td>{html.escape(lv['change'])}</td>"
        f"<td>{_fmt(lv['tokens_per_s'])}</td><td>{_fmt(lv['speedup_vs_baseline'])}</td>"
        f"<td>{_fmt(lv['final_loss'])}</td><td>{_fmt(lv['loss_curve_max_abs_diff_vs_baseline'])}</td></tr>"
        for lv in summary.get("levers", []))
    levers = ("<h2>Levers (each one change against the baseline)</h2><table><tr><th>lever</th><th>change</th>"
              "<th>tokens/s</th><th>speedup</th><th>final loss</th><th>loss curve max |diff|</th></tr>"
              f"{lever_rows}</table>") if lever_rows else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary["notes"])
    img = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ie_helpers benchmark</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f4f4f4}}</style></head>
<body><h1>Training and generation benchmark</h1>
<table>{body}</table>
{levers}
<h2>Speedups</h2><img alt="speedup bar chart" src="data:image/png;base64,{img}">
<h2>Notes</h2><ul>{notes}</ul>
<p>Full numbers, loss curves and settings: <code>bench.json</code>.</p>
</body></html>
"""



def _print_summary(s: dict, out_dir: Path) -> None:
    lines = [
        f"device            {s['device']} ({s['torch_threads']} torch threads), model {s['model']}",
        f"training          {s['train_tokens_per_s']:.0f} tok/s fast ({s['precision']}"
        f"{', gradient checkpointing' if s.get('gradient_checkpointing') else ''}"
        f"{', micro-batches of %d rows' % s['micro_batch'] if (s.get('micro_batch') or 0) < s['batch_size'] else ''}"
        ") vs "
        f"{s['baseline_train_tokens_per_s']:.0f} tok/s TRL defaults ({s['baseline_precision']}): "
        f"{s['train_speedup']:.2f}x" + (f" (baseline timed over its first {s['baseline_steps']} of {s['steps']} steps)"
                                        if s.get("baseline_capped") else ""),
        f"losses            final {s['final_loss_fast']:.3f} vs {s['final_loss_baseline']:.3f}, "
        f"epoch mean {s['mean_loss_fast']:.3f} vs {s['mean_loss_baseline']:.3f}, "
        f"curve max |diff| {s['loss_curve_max_abs_diff']:.3f}",
        f"generation        {s['gen_tokens_per_s']:.1f} tok/s batched vs {s['baseline_gen_tokens_per_s']:.1f} "
        f"unbatched: {s['gen_speedup']:.2f}x; greedy match {s['greedy_match_rate']:.2f} ({s['greedy_match_dtype']})"
        + (f", fp32 {s['greedy_match_rate_fp32']:.2f}" if s["greedy_match_rate_fp32"] is not None else ""),
        f"FLOPs             {s['flops_per_token'] / 1e6:.1f} MFLOP/token, peak {s['peak_flops'] / 1e9:.0f} GFLOP/s, "
        f"fraction of peak {s['fraction_of_peak']:.3f}" + (f", MFU {s['mfu']:.3f}" if "mfu" in s else "")
        + f"; of the measured {s['precision']} matmul ({s['measured_matmul_flops'] / 1e9:.0f} GFLOP/s) "
        f"{s['fraction_of_measured_matmul']:.3f}, of the spec figure ({s['spec_peak_flops'] / 1e9:.0f} GFLOP/s) "
        f"{s['fraction_of_spec_peak']:.3f}",
        f"encoder           {s['encoder_tokens_per_s']:.0f} tok/s fast vs {s['baseline_encoder_tokens_per_s']:.0f} tok/s "
        f"HF Trainer defaults: {s['encoder_speedup']:.2f}x"
        + encoder_lever_line((s.get("encoder") or {}).get("fast_dropout_lever")),
        "peak memory       " + ", ".join(f"{k} {v:.2f} GB RSS" for k, v in s["peak_rss_gb"].items())
        + ("; CUDA " + ", ".join(f"{k} {v:.2f} GB" for k, v in s["cuda_peak_gb"].items()) if s.get("cuda_peak_gb") else ""),
    ]
    for lv in s["levers"]:
        lines.append(f"lever             {lv['lever']}: {lv['speedup_vs_baseline']:.2f}x")
    lines.append(f"wall time         {s['wall_seconds']:.0f} s; wrote {out_dir / 'bench.json'}, "
                 f"{out_dir / 'summary.html'}")
    print("\n".join(lines), flush=True)


def encoder_lever_line(lever: dict | None) -> str:
    if not lever:
        return ""
    if lever.get("skipped"):
        return f"; fast_dropout={lever['fast_dropout']} run {lever['skipped']}"
    return (f"; with fast_dropout={lever['fast_dropout']} {lever['speedup']:.2f}x "
            f"(MaskDropout {lever['fast_dropout_gain']:.2f}x)")
