"""Faithful reading of Caffe prototxt: parse, upgrade, Caffe's own checks, param table.

This package gives no meaning to what it reads beyond what Caffe itself computes at load time
(defaults, upgrades, multipliers, shapes). Public entry points::

    load_solver(path, *, lenient=False) -> SolverSpec
    load_net(path, *, lenient=False) -> NetSpec
    load_recipe(solver_path, *, net_path=None, lenient=False) -> Recipe
"""

from caffe2tf.caffe.model import NetSpec, ParamBlob, Recipe, SolverSpec

__all__ = ["NetSpec", "ParamBlob", "Recipe", "SolverSpec", "load_net", "load_recipe", "load_solver"]


def __getattr__(name: str):  # lazy so that importing the model types stays cheap
    if name in {"load_solver", "load_net", "load_recipe"}:
        from caffe2tf.caffe import load

        return getattr(load, name)
    raise AttributeError(name)
