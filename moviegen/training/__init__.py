"""Training: one loop (``Trainer``) for every model, and what it is made of.

trainer.py      the loop: data -> step -> non-finite guard -> optimizer -> metrics,
                validation, checkpoints; subclasses supply the model, data and step
diffusion.py    the flow-matching transformer's trainer
tae.py          the temporal autoencoder's trainer
optim.py        AdamW parameter groups and the warmup + cosine schedule
checkpoint.py   DCP checkpoints of Stateful objects, atomic commits, safe loading
cli.py          what ``python -m moviegen.train`` / ``train_tae`` run: parse, build,
                fit, exit codes and the closing line
ema.py, fault.py, metrics.py, export.py, distributed.py
"""
