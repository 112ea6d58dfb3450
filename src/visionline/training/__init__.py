"""Training: ``fit()`` drives ``train_one_epoch()`` and ``evaluate()``.

Outputs, all in the artifact store under ``runs/<run_id>/``:

- ``checkpoints/epoch-NNNN.pt`` each epoch (model, optimizer, scheduler, epoch, best
  metric, early-stopping state, metrics history, config), written atomically;
- ``metrics.jsonl``, one line per epoch;
- at the end ``model.pt`` (the best weights), ``config.yaml``, ``preprocessing.json``,
  ``classes.json`` and ``run.json`` (dataset version, code version, config hash), which
  is written last and marks the run complete.

Running again with the same run id resumes from the newest checkpoint; every epoch
reseeds from (seed, epoch), so on CPU a resumed run ends exactly where an uninterrupted
one does. Under ``torchrun`` the same code runs data-parallel (NCCL on GPUs, gloo on CPU).

    python -m visionline.training --config URI --run-id ID [--store URI]

The rooms: ``plan`` (config, store, dataset -> the run plan ``fit`` takes), ``devices``
(process group, device, autocast, seeding), ``data`` (splits and loaders), ``optim``
(optimiser, LR schedule), ``early_stopping``, ``trainer`` (the state a run's epochs
share), ``loop`` (``fit``, ``run_epoch``, ``train_one_epoch``, ``evaluate``),
``checkpoint`` (save, restore, finish), ``resume`` (what makes any batch a resume
point) and ``entry`` (the process's command line, run by ``__main__``).

Nothing is imported here: ``visionline.training.plan`` is what compute backends and the
tuner need, and importing it must not load the loop and torch's training stack.
"""
