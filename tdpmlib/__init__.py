"""tdpmlib: DDPM, Deep Image Prior and the TDPM-DIP truncated sampler, for the tdpm-dip report.

Modules, one concept each: ``data``, ``models``, ``schedules``, ``ddpm``, ``dip``, ``tdpm``, ``examples``,
``metrics``, ``plotting``, ``results``, ``config``, ``pipeline`` (notebook glue) and ``sweep`` (CLI).
"""

__version__ = "0.1.0"
