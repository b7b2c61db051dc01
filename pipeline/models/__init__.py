"""Model backends behind one policy interface (pipeline.models.policy): mini, sd3 and flux.

``mini`` is the small in-repo model; ``sd3`` (Stable Diffusion 3 / 3.5) and ``flux``
(FLUX.1-dev) load diffusers folders from disk and train a LoRA adapter. Build one with
:func:`pipeline.models.backends.load_policy`. This package file imports nothing, so that a
stage using one backend's module (pretraining: ``mini``) does not depend on the others'
sources (:mod:`pipeline.workflow.sources`).
"""
