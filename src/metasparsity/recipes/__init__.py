"""Recipes: one plain class or function per job (``train``, ``meta_train``, ``finetune``, ``sweep``,
``compare``, ``prune``, ``evaluate_run``), each readable top to bottom.  A training recipe is
``setup()`` (config → plain arguments, data, model, optimizers), ``train()`` (its explicit loop)
and ``cleanup()``; the run's lifecycle is a :class:`~metasparsity.training.session.RunSession`."""

from __future__ import annotations

from typing import Any


def run_recipe(recipe: Any) -> Any:
    """``recipe.setup()``, then ``recipe.train()``'s result; ``recipe.cleanup()`` in any case,
    and the loader workers of its batch streams stopped (left to the garbage collector, a
    recipe's cycle of references kept them waiting about 5 s per worker)."""
    from metasparsity.training.batches import BatchStream

    def close_streams() -> None:
        for v in list(vars(recipe).values()):
            if isinstance(v, BatchStream):
                v.close()

    try:
        recipe.setup()
    except BaseException:
        close_streams()  # setup may have started one (meta-train's auto λ0 reads batches)
        session = getattr(recipe, "session", None)
        if session is not None:  # opened before the failure: its log and run lock
            session.close()
        raise
    try:
        return recipe.train()
    finally:
        try:
            recipe.cleanup()
        finally:
            close_streams()
