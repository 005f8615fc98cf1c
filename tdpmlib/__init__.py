"""tdpmlib: DDPM, Deep Image Prior and the TDPM-DIP truncated sampler, for the tdpm-dip report.

Five packages, each importing only from those before it: ``evaluation`` (metrics and paired statistics),
``methods`` (schedules, networks, DDPM, DIP, TDPM-DIP, stopping rules), ``book`` (tables, figures, verdict
phrases), ``workflow`` (config, data, results, notebook glue, budgets, training CLI, sweeps) and ``studies`` (one
study per chapter). The README's "How the code is organised" lists their modules.
"""

import warnings

# datasets and diffusers import tqdm.auto, which warns in every notebook kernel without ipywidgets; tdpmlib
# shows no progress bars in notebooks, so the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
