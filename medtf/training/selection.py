"""Leak guards for anything that *chooses* (a hyperparameter search, model roulette): never on the test split.

Choosing hyperparameters or an initialisation by a score on the test split makes that split part of training, and
the test result it then reports is optimistic (the prostate thesis chose by test AUC). Every chooser scores on
the validation split (``data.val_split``, or a fold ``fold-k`` under cross-validation); the test split is
evaluated once, at the end (``medtf evaluate RUN_DIR --split test``), on the model the choice produced.
"""

from __future__ import annotations

from medtf.training.config import ConfigError

__all__ = ["check_selection_split", "is_test_split"]


def is_test_split(name) -> bool:
    """A split a chooser must not see: any name containing ``test`` (``test``, ``challenge-test``, ...)."""
    return name is not None and "test" in str(name).lower()


def check_selection_split(experiment, who: str) -> str:
    """The split ``who`` may select on (``data.val_split``, or with ``data.fold`` the round's selection fold,
    `medtf.training.inputs.fold_roles`); raises ConfigError for none, a test split, or a test split among the
    training splits (which would train on it)."""
    data = experiment.data
    if data.fold is not None:  # the folds replace train_split / val_split
        from medtf.training.inputs import fold_roles

        return fold_roles(data).selection
    split = data.val_split
    if not split:
        raise ConfigError(f"{who} selects on data.val_split, which is null: set a validation split")
    if is_test_split(split):
        raise ConfigError(f"{who} refuses to select on {split!r}: choosing on the test split leaks it into the "
                          f"reported result; select on a validation split (or folds) and evaluate the test split "
                          f"once at the end")
    train = data.train_split if isinstance(data.train_split, (list, tuple)) else [data.train_split]
    if any(is_test_split(s) for s in train):
        raise ConfigError(f"{who} refuses data.train_split {data.train_split!r}: it contains the test split")
    return split
