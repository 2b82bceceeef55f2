"""Training without files: a member's state, the one epoch loop, and the two steps it drives.

`state.TrainState` holds one experiment's model, optimizer, one-cycle schedule and dynamics rows;
`loop.epoch_steps` is the only epoch loop (batches, divergence checks, evaluation, metrics) and
drives a step — `single.SingleStep` (one member, torch's SGD and OneCycleLR) or `group.GroupStep`
(K members as one vmapped model, `sgd.stacked_sgd` as its update). Nothing here reads or writes
a result file: `normlab.experiment` ties a state to its directory.
"""
