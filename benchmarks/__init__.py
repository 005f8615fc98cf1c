"""Performance benchmarks of tdpmlib: batched DIP fitting, DDPM sampling and training, end-to-end TDPM-DIP.

    python -m benchmarks [--quick] [--cases dip,sampling,training,e2e] [--compile]
                         [--device auto|cpu|cuda] [--out results/bench] [--threads N]

Every case times a variant against a baseline measured in the same run and prints the throughput, the
peak memory and the ratio. The table goes to ``<out>/<hardware-slug>/bench.csv`` and, with the
hardware, versions, date and git commit, to ``bench.json`` (``--quick`` runs go to ``<slug>-quick``, so a
smoke run never replaces a real measurement). Targets that need a GPU are reported as
"not measured (no CUDA)" on a machine without one; nothing is ever estimated across hardware.
Sampling chains may be timed over k of N steps and extrapolated linearly (the row says so); DIP fits and
end-to-end TDPM-DIP runs are always timed in full.

Modules: ``common`` (timing, memory, hardware, FLOPs), ``cases`` (the four cases), ``report`` (table,
files, loading for notebook 08), ``cli`` (the command line).
"""

COLUMNS = [
    "case", "row", "variant", "device", "hardware", "preset", "resolution", "batch", "status",
    "seconds", "seconds_per", "repeats", "throughput", "unit", "peak_mem_mb", "mem_method", "baseline", "ratio",
    "target", "target_id", "target_value", "target_met", "nfe", "dip_iterations", "flops_per_image",
    "achieved_tflops", "mfu", "extrapolation", "note",
]
CASES = ("dip", "sampling", "training", "e2e")
