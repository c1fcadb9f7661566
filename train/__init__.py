"""Training InfGen from scratch (`python -m infgen.train`): an application beside the reference model.

trainer.py: the two-stage trainer and its CLI; config.py: TrainConfig, its settings (one field
per flag); data.py: the training set; photos.py: its photos (offline ones with the held-out split,
and image folders). It imports infgen_ref and infgen.cli; nothing in infgen_ref, cli, kernels,
export or runtime imports it.
"""
