"""The machine a measurement ran on: CPU model, cores, clock and peak FLOP/s (spec and measured), the device,
a sampler of peak resident (and CUDA) memory, and the FLOPs per token of LoRA training (model FLOPs
utilisation = tokens/s × FLOPs per token / peak). Used by the bench and by every report's run.json."""

from __future__ import annotations

import math
import os
import platform
import re
import time
from pathlib import Path

# Peak dense matrix FLOP/s per GPU (bf16, no sparsity), from the vendors' data sheets.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak resident memory (sampled every 20 ms) and peak CUDA allocation while the block runs, in GB.

    ``ru_maxrss`` only ever grows within a process, so it cannot give each path of one bench run its own
    peak; sampling VmRSS can (a peak shorter than the interval may be missed)."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_rss_gb = float("nan")
        self.cuda_peak_gb = None

    def __enter__(self):
        import threading

        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._peak = _rss_bytes()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval_s):
                self._peak = max(self._peak, _rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_rss_gb = max(self._peak, _rss_bytes()) / 1e9
        if self._cuda:
            torch.cuda.synchronize()
            self.cuda_peak_gb = torch.cuda.max_memory_allocated() / 1e9
        return False

    def as_dict(self) -> dict:
        return {"peak_rss_gb": self.peak_rss_gb, "cuda_peak_gb": self.cuda_peak_gb}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    return m.group(1).strip() if m else (platform.processor() or platform.machine() or "cpu")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_ghz() -> tuple[float, str]:
    """Core clock: cpufreq's max where exposed, else /proc/cpuinfo's current MHz."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", _cpuinfo(), re.M)
    if m:
        return float(m.group(1)) / 1e3, "/proc/cpuinfo cpu MHz"
    return 2.5, "unknown clock: assumed 2.5 GHz"


def cpu_flops_per_cycle(precision: str) -> tuple[int, str]:
    """Dense FLOPs per cycle per core for the precision the training ran in (one vector unit assumed)."""
    flags = set(re.findall(r"[\w.]+", " ".join(re.findall(r"^flags\s*:(.*)$", _cpuinfo(), re.M)[:1])))
    if precision == "bf16":
        if "amx_bf16" in flags:
            return 1024, "AMX-BF16 tile multiply: 1024 bf16 FLOPs/cycle/core"
        if "avx512_bf16" in flags:
            return 64, "AVX512-BF16 VDPBF16PS: 32 bf16 pairs → 64 FLOPs/cycle/core (one 512-bit op per cycle)"
    if "avx512f" in flags:
        return 32, "AVX-512 fp32 FMA: 16 lanes × 2 FLOPs, one 512-bit FMA per cycle"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 fp32 FMA: 8 lanes × 2 FLOPs × 2 FMA units"
    return 8, "no AVX2/AVX-512 flags found: assumed 8 fp32 FLOPs/cycle/core"


def peak_flops(precision: str, override_gflops: float | None = None) -> dict:
    """Peak dense FLOP/s of the machine for ``precision``, with how it was estimated."""
    import torch

    if override_gflops:
        return {"peak_flops": override_gflops * 1e9, "source": "--peak-gflops override",
                "assumption": f"given on the command line: {override_gflops:g} GFLOP/s"}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, peak in GPU_PEAK_BF16.items():
            if key.lower() in name.lower():
                scale = 1.0 if precision == "bf16" else 0.5  # tf32 tensor-core peak is half the bf16 one
                return {"peak_flops": peak * scale, "source": f"data-sheet table ({key})",
                        "assumption": f"{name}: {peak / 1e12:g} TFLOP/s dense bf16"
                                      + ("" if precision == "bf16" else ", halved for tf32/fp32")}
        return {"peak_flops": float("nan"), "source": "unknown GPU",
                "assumption": f"{name} is not in the peak table: pass --peak-gflops"}
    cores = cpu_cores()
    ghz, clock_source = cpu_ghz()
    per_cycle, unit = cpu_flops_per_cycle(precision)
    peak = cores * ghz * 1e9 * per_cycle
    return {"peak_flops": peak, "source": "cores × clock × FLOPs/cycle/core",
            "assumption": (f"{cores} cores × {ghz:.3f} GHz ({clock_source}) × {per_cycle} FLOPs/cycle ({unit}) "
                           f"= {peak / 1e9:.0f} GFLOP/s; the issue estimated ~333 GFLOP/s bf16 for the 2-core "
                           "EPYC CI box (2 × 2.6 GHz × 64). Turbo/AVX clocks and memory bandwidth are ignored.")}


def measured_matmul_flops(precision: str, size: int = 2048, repeats: int = 8) -> float:
    """Best FLOP/s of a square matmul in ``precision``: what this machine's BLAS actually reaches."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = math.inf
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_info() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "device_type": "cuda",
                "torch_threads": torch.get_num_threads()}
    from ie_helpers.cpu_speed import cpu_family

    return {"device": cpu_name(), "device_type": "cpu", "cpu_family": cpu_family(), "cpu_cores": cpu_cores(),
            "torch_threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- FLOPs of LoRA training


def model_dims(model_path: str, lora_r: int) -> dict:
    """N_base (non-embedding weights), N_lora (all-linear adapters), d, V, layers — from a meta-device copy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    d, vocab = embed.weight.shape[1], embed.weight.shape[0]
    seen, total = set(), 0
    for p in model.parameters():  # tied weights count once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    head_separate = head is not None and head.weight is not embed.weight
    n_base = total - embed.weight.numel() - (head.weight.numel() if head_separate else 0)
    n_lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:  # peft's all-linear skips the output layer
            n_lora += lora_r * (module.in_features + module.out_features)
    return {"n_base": int(n_base), "n_lora": int(n_lora), "d": int(d), "vocab": int(vocab),
            "layers": int(getattr(config, "num_hidden_layers", 0)), "tied_head": not head_separate}


def flops_model(dims: dict, completion_fraction: float, mean_tokens: float = 0.0) -> dict:
    """Model FLOPs per non-padding training token, fast path and baseline.

    4·N_base (forward 2N + backward activation grads 2N; frozen weights get no weight grads)
    + 6·N_lora (forward, activation grads, weight grads)
    + head: 2·d·V forward + 2·d·V backward (activation grad only: the head is frozen/tied to the frozen
      embedding), on completion tokens for the fast path and on every token for the baseline.
    Attention score/value products (~12·L·s·d per token) and gradient-checkpointing recompute are not counted.
    """
    n_base, n_lora, d, v = dims["n_base"], dims["n_lora"], dims["d"], dims["vocab"]
    head = 4 * d * v
    body = 4 * n_base + 6 * n_lora
    fast = body + head * completion_fraction
    # causal attention: QK^T and AV, ~2·2·(s/2)·d forward per token per layer, ×3 with the backward
    attention = 6 * dims["layers"] * mean_tokens * d
    return {
        "formula": "4*N_base + 6*N_lora + 4*d*V*f_head  (f_head = completion-token share on the fast path, "
                   "1 on the baseline; head backward = activation grad only since the head is frozen)",
        "flops_per_token": fast,
        "baseline_flops_per_token": body + head,
        "head_flops_per_head_token": head,
        "completion_fraction": completion_fraction,
        "not_counted": "attention QK^T/AV products, gradient-checkpointing recompute, padding positions",
        "attention_flops_per_token_not_counted": attention,
        "attention_share_not_counted": attention / (fast + attention) if fast + attention else float("nan"),
        **{k: dims[k] for k in ("n_base", "n_lora", "d", "vocab", "layers")},
    }
