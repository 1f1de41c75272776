"""mlbook: the small shared library behind the book's notebooks.

Modules are flat and named after what they hold:

- ``device``: where tensors live (``get_device``), seeding (``seed_all``), device-independent draws
- ``data``: toy 2-D distributions with exact densities, scikit-learn's bundled data sets
- ``metrics``: sample-quality metrics (MMD, sliced Wasserstein, W1 to an exact CDF), their noise floor, and per-mode weights and widths against a known mixture
- ``train``: the one training loop, and progress bars
- ``widgets``: the one widget helper (``slider_plot``), live in Jupyter and in the static book
- ``plot``, ``report``: plot defaults and drawing helpers; text tables and timers
- ``nets``: small networks (a plain MLP builder, a time-conditioned MLP, a tiny autoregressive token GRU)
- ``ode``: fixed-step ODE solvers, divergences, ODE log-likelihoods (diffusion and flows chapters)
- ``sde``: SDE simulation, unadjusted Langevin dynamics, a 1-D Fokker-Planck solver
- ``kl``: chapter "Approximating KL divergence"
- ``optim``: stochastic approximation (Robbins-Monro, Polyak-Ruppert averaging), optimisers and schedules
- ``scaling``: FLOPs of small convolutional networks, compound scaling
- ``distributed``: data-parallel training with ``torch.distributed`` (ring all-reduce, the torchrun example)
- ``trees``, ``ensembles``: CART trees; bagging, random forests, AdaBoost, gradient and second-order boosting
- ``svm``: hinge loss, linear SVM, kernels and the SMO dual solver
- ``unsupervised``: k-means, agglomerative clustering, choosing k, PCA, probabilistic and kernel PCA
- ``meta``: the sinusoid task family, MAML, first-order MAML, Reptile
- ``compression``: pruning masks and lottery tickets, distillation, int8 quantization
- ``mixture``: EM for mixtures, written once over component families (Bernoulli)
- ``autoregressive``: FVSBN, NADE, MADE, bits per image
- ``latent``: the VAE, gradient estimators, Gumbel tricks, vector quantisation and the VQ-VAE
- ``flows``: coupling flows, continuous flows, flow matching and rectified flow
- ``ebm``: energy MLPs, InfoNCE, derivative-free and Langevin inference
- ``alignment``: Bradley-Terry rewards, KL-regularised policies, RLHF, DPO, GRPO
- ``diffusion``: noise processes (VP, VE, DDPM, EDM), parameterisations, the exact mixture score, losses
- ``score``: score matching without the score: Hyvarinen's exact-trace objective, sliced and denoising score matching
- ``sampling``: diffusion samplers with one shared signature (DDIM to DPM-Solver++), and guidance
- ``latent_diffusion``: autoencoders for latent diffusion, class-conditional EDM in a latent
- ``selfsup``: augmentations of digits, InfoNCE, SimSiam, masked prediction, probes
- ``transfer``: importance weighting, fine-tuning, gradient reversal and DANN, zero-shot by attributes
"""

from .device import get_device, seed_all

__version__ = "0.1.0"
__all__ = ["get_device", "seed_all", "__version__"]
