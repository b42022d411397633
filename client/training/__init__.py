"""Training on the site's own images, which never leave it: loading and checking images
(``data``), the examples held whole for sampling (``examples``), DP-SGD that runs exactly the
accountant's schedule (``dp_training``: Poisson sampling in ``poisson_sampling``, per-example
clipping on TF-Privacy's primitives in ``per_example_clipping``, the two engines in
``dp_engines``), the site's hash-chained privacy ledger (``ledger``; the accounting itself is
``shared.privacy_accounting``, which the server uses too), what the site declares and which DP
schedules it accepts (``privacy_contract``), cached backbone features (``feature_cache``), the
fast ResNet stages (``resnet_stages``), saved model files (``model_files``) and the stand-in
backbone's pretraining (``backbone_pretraining``).

May import ``site_profile`` and ``shared`` only: no networking here.
"""
