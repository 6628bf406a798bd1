"""Live Keras objects from a plan or a train_config mapping (imports Keras lazily).

``build_optimizer(plan)`` and ``prepare_model(model, plan)`` do what the emitted
``optimizer.py`` does; both go through the train_config mapping
(:func:`~caffe2tf.targets.keras.render_yaml.plan_to_config`) so the YAML and the live objects
cannot drift apart. Routes (``plan.py``): ``builtin`` = one ``keras.optimizers`` class with a
schedule; ``multi`` = ``keras.optimizers.MultiOptimizer`` with one sub-optimizer per lr_mult,
routed by ``re.fullmatch`` on ``variable.path`` (keras ``optimizers/multi_optimizer.py:36-99``);
``custom`` = a subclass of :class:`~caffe2tf.targets.keras.runtime.CaffeOptimizer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from caffe2tf.targets.keras.model import KerasPlan


def _schedule(spec: Mapping[str, Any], lr_mult: float = 1.0) -> Any:
    import keras

    from caffe2tf.targets.keras import runtime

    cls = spec["class"]
    args = dict(spec.get("args") or {})
    if cls == "constant":
        return (
            float(args["learning_rate"]) * lr_mult
            if lr_mult != 1.0
            else float(args["learning_rate"])
        )
    if cls == "CaffeSchedule":
        if lr_mult != 1.0:
            args["lr_mult"] = float(args.get("lr_mult", 1.0)) * lr_mult
        return runtime.CaffeSchedule(**args)
    if lr_mult != 1.0:
        if "initial_learning_rate" in args:
            args["initial_learning_rate"] = float(args["initial_learning_rate"]) * lr_mult
        if "values" in args:
            args["values"] = [float(v) * lr_mult for v in args["values"]]
    if "boundaries" in args:
        args["boundaries"] = [int(b) for b in args["boundaries"]]
    if "values" in args:
        args["values"] = [float(v) for v in args["values"]]
    return getattr(keras.optimizers.schedules, cls)(**args)


def build_from_config(config: Mapping[str, Any]) -> Any:
    """A fresh live optimizer for a train_config mapping (see ``train_config.schema.md``)."""
    import keras

    from caffe2tf.targets.keras import runtime

    opt_spec = config["optimizer"]
    sched_spec = config["schedule"]
    cls = opt_spec["class"]
    args = dict(opt_spec.get("args") or {})
    route = config["route"]
    if route == "custom":
        multipliers = {
            f"{v['keras_layer']}/{v['blob']}": (float(v["lr_mult"]), float(v["decay_mult"]))
            for v in config.get("variables") or []
        }
        default = config["default_variable"]
        optimizer_cls = getattr(runtime, cls)
        if not (
            isinstance(optimizer_cls, type) and issubclass(optimizer_cls, runtime.CaffeOptimizer)
        ):
            raise ValueError(f"unknown custom optimizer class {cls!r}")
        return optimizer_cls(
            learning_rate=_schedule(sched_spec),
            multipliers=multipliers,
            default_multipliers=(float(default["lr_mult"]), float(default["decay_mult"])),
            **args,
        )
    optimizer_cls = getattr(keras.optimizers, cls)
    if route == "builtin":
        return optimizer_cls(learning_rate=_schedule(sched_spec), **args)
    if route != "multi":
        raise ValueError(f"unknown route {route!r}")
    optimizers: dict[tuple[float, Any], Any] = {}

    def for_mult(m: float, momentum: Any = None) -> Any:
        # one sub-optimizer per (lr_mult, momentum); momentum None: the optimizer's own
        if (m, momentum) not in optimizers:
            own = {} if momentum is None else {"momentum": float(momentum)}
            optimizers[m, momentum] = optimizer_cls(
                learning_rate=_schedule(sched_spec, m), **{**args, **own}
            )
        return optimizers[m, momentum]

    default_opt = for_mult(1.0)
    shared = args.get("momentum")
    routes = {}
    frozen = None  # lr_mult 0: kept in place after load_model makes it trainable again
    for v in config.get("variables") or []:
        m = float(v["lr_mult"])
        mom = v.get("momentum")
        if mom is not None and shared is not None and float(mom) == float(shared):
            mom = None
        pattern = runtime.path_pattern(str(v["keras_layer"]), int(v["blob"]))
        if not v["trainable"]:
            frozen = frozen or keras.optimizers.SGD(learning_rate=0.0)
            routes[pattern] = frozen
        elif m != 1.0 or mom is not None:
            routes[pattern] = for_mult(m, mom)
    return keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(default_optimizer=default_opt, optimizer_map=routes)
    )


def _reg(spec: Mapping[str, Any] | None) -> tuple[str, float] | None:
    if not spec:
        return None
    return (str(spec["class"]), float(spec["factor"]))


def prepare_from_config(model: Any, config: Mapping[str, Any]) -> dict[str, str]:
    """Bind a train_config's per-blob settings to ``model`` (see ``runtime.bind_caffe_blobs``)."""
    from caffe2tf.targets.keras import runtime

    blobs = [
        (str(v["keras_layer"]), int(v["blob"]), bool(v["trainable"]), _reg(v.get("regularizer")))
        for v in config.get("variables") or []
    ]
    names = {str(v["keras_layer"]): str(v["caffe_layer"]) for v in config.get("variables") or []}
    default = config["default_variable"]
    return runtime.bind_caffe_blobs(
        model, blobs, (bool(default["trainable"]), _reg(default.get("regularizer"))), names
    )


def build_optimizer(plan: KerasPlan) -> Any:
    """The live optimizer for ``plan`` (same object the emitted ``build_optimizer()`` makes)."""
    from caffe2tf.targets.keras.render_yaml import plan_to_config

    return build_from_config(plan_to_config(plan))


def prepare_model(model: Any, plan: KerasPlan) -> dict[str, str]:
    """Attach the plan's regularizers / trainable flags to ``model``'s variables."""
    from caffe2tf.targets.keras.render_yaml import plan_to_config

    return prepare_from_config(model, plan_to_config(plan))
