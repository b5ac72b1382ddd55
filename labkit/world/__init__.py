"""The embedded world: a seeded generator of a fictional but consistent world and its artifacts.

`make_world` draws the knowledge base; `build.build_samples` writes every data file of
data_samples/ from it (`labkit build-samples`); `models.train_models` trains the shipped tiny
models on its corpus (`labkit train-models`).
"""

from .kb import World, make_world

__all__ = ["World", "make_world"]
