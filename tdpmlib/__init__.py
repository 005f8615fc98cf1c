"""tdpmlib: DDPM, Deep Image Prior and the TDPM-DIP truncated sampler, for the tdpm-dip report.

Modules, one concept each: ``data``, ``models``, ``schedules``, ``ddpm``, ``dip``, ``tdpm``, ``metrics``,
``plotting``, ``results``, ``memory``, ``config``, ``pipeline`` (notebook glue) and ``sweep`` (CLI; one grid point
in ``sweep_point``, pools on one machine in ``sweep_exec``, cluster jobs in ``sweep_cluster``); the notebooks' protocols
``generation`` and ``experiments`` (its methods in ``denoisers``), ``example1``, ``example2`` (its stopping rules
in ``stopping``), ``ablate`` and ``ablate_paired`` (chapter 06), ``synthesis``, ``claims`` and ``assessment``
(chapter 07).
"""

import warnings

# datasets and diffusers import tqdm.auto, which warns in every notebook kernel without ipywidgets; tdpmlib
# shows no progress bars in notebooks, so the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
