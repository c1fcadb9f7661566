"""Training InfGen from scratch (`python -m infgen.train`): an application beside the reference model.

trainer.py: the two-stage trainer and its CLI; data.py: the training set. It imports infgen_ref;
nothing in infgen_ref, kernels, export or runtime imports it.
"""
