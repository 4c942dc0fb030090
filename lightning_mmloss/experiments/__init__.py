"""The experiment harness: baseline classifier, data modules, ``compare`` and the command line.

Separate from the plugin core (:mod:`lightning_mmloss`: loss, functional, metrics, mixin,
callback), which never imports it. Its extra dependency (``jsonargparse``, for LightningCLI)
comes with ``pip install "lightning-mmloss[experiments]"``.
"""
