"""Performance benchmarks of tdpmlib's fast paths: batched DIP fitting, DDPM sampling and training.

    python -m benchmarks [--quick] [--cases dip,sampling,training] [--compile]
                         [--device auto|cpu|cuda] [--out results/bench] [--threads N]

Every case times a variant against a baseline measured in the same run and prints the throughput, the
peak memory and the ratio. The table goes to ``<out>/<hardware-slug>/bench.csv`` and, with the
hardware, versions, date and git commit, to ``bench.json`` (``--quick`` runs go to ``<slug>-quick``, so a
smoke run never replaces a real measurement). Targets that need a GPU are reported as
"not measured (no CUDA)" on a machine without one; nothing is ever estimated across hardware.
Sampling chains may be timed over k of N steps and extrapolated linearly (the row says so); DIP fits are
always timed in full.

The suite measures the library's fast paths against their baselines. What a *method* costs per image (every
second per image the book shows, and its one generation speed-up) comes from the timing benchmark of chapter 08
instead (``tdpmlib.studies.timing``, ``tdpmlib.studies.timing_cases``): each method alone, at its validated budget; the suite's
former end-to-end case is retired for that reason, and rows of retired cases are not loaded.

Modules: ``common`` (timing, memory, hardware, FLOPs), ``cases`` (the three cases), ``report`` (table,
files, loading for notebook 08), ``cli`` (the command line).
"""

COLUMNS = [
    "case", "row", "variant", "device", "hardware", "preset", "resolution", "batch", "status",
    "seconds", "seconds_per", "repeats", "throughput", "unit", "peak_mem_mb", "mem_method", "baseline", "ratio",
    "target", "target_id", "target_value", "target_met", "nfe", "dip_iterations", "flops_per_image",
    "achieved_tflops", "mfu", "extrapolation", "note",
]
CASES = ("dip", "sampling", "training")
