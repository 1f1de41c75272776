"""mlbook: the small shared library behind the book's notebooks.

Modules are flat and named after what they hold:

- ``device``: where tensors live (``get_device``), seeding (``seed_all``), device-independent draws
- ``data``: toy 2-D distributions with exact densities, scikit-learn's bundled data sets
- ``metrics``: sample-quality metrics (MMD, sliced Wasserstein) and their noise floor
- ``train``: the one training loop, and progress bars
- ``widgets``: the one widget helper (``slider_plot``), live in Jupyter and in the static book
- ``plot``, ``report``: plot defaults and drawing helpers; text tables and timers
- ``nets``: small networks (a time-conditioned MLP)
- ``ode``: fixed-step ODE solvers, divergences, ODE log-likelihoods (diffusion and flows chapters)
- ``sde``: SDE simulation and a 1-D Fokker-Planck solver
- ``kl``: chapter "Approximating KL divergence"
- ``diffusion``: noise processes (VP, VE, DDPM, EDM), parameterisations, the exact mixture score, losses
- ``sampling``: diffusion samplers with one shared signature, and guidance
"""

from .device import get_device, seed_all

__version__ = "0.1.0"
__all__ = ["get_device", "seed_all", "__version__"]
