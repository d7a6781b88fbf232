"""Research tooling: phantoms, training datasets, training and evaluation.

Built on the inference modules of `pipeline`; inference never imports from here, so an
installation that only analyses series does not carry the training code paths.
"""
