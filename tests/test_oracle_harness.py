"""The real-Caffe harness reproduces hand-checkable facts of the binary, the committed goldens
still match a fresh run, Caffe's own V1 upgrade and net construction give what we expect, and
failures are loud. All Caffe work is batched into a few chroot processes (module fixtures)."""

from __future__ import annotations

import numpy as np
import pytest

from caffe2tf.verify import matrix, oracle

f32 = np.float32

# ------------------------------------------------------------------------------------ helpers

IP_NET = """name: "hand"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" %s
        inner_product_param { num_output: 3 } }
"""
SHAPES = {"fc1/0": (3, 4), "fc1/1": (3,)}

SHARED_NET = """name: "shared"
layer { name: "x" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 1 dim: 2 } data_filler { type: "constant" value: 1 } } }
layer { name: "y" type: "DummyData" top: "y"
        dummy_data_param { shape { dim: 1 dim: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
        inner_product_param { num_output: 1 bias_term: false } }
layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" }
        inner_product_param { num_output: 1 bias_term: false } }
layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "y" top: "loss" }
"""


def _rand(seed: int, shapes=SHAPES, scale=0.5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, scale, s).astype(f32) for k, s in shapes.items()}


def _sgd(extra: str = "", lr: str = "0.1") -> str:
    return f'type: "SGD"\nbase_lr: {lr}\nlr_policy: "fixed"\nmax_iter: 100\n{extra}\n'


W0 = _rand(1)
G = [_rand(10 + k, scale=0.1) for k in range(20)]
W0_L1 = {k: v.copy() for k, v in W0.items()}
W0_L1["fc1/0"][0, :2] = 0.0
W0_L1["fc1/1"][1] = 0.0
ZERO_G = [{k: np.zeros(s, f32) for k, s in SHAPES.items()}]


def _clip_grads() -> list[dict[str, np.ndarray]]:
    big = {k: v * f32(20) for k, v in G[0].items()}
    return [big, G[1]]


HAND = {
    "sgd-one-step": oracle.OracleCase("sgd-one-step", _sgd(), IP_NET % "", W0, G[:1]),
    "l2-decay": oracle.OracleCase("l2-decay", _sgd("weight_decay: 0.1"), IP_NET % "", W0, G[:1]),
    "l1-decay": oracle.OracleCase(
        "l1-decay", _sgd('weight_decay: 0.1\nregularization_type: "L1"'), IP_NET % "", W0_L1, ZERO_G
    ),
    "lr-mult-0": oracle.OracleCase(
        "lr-mult-0",
        _sgd("momentum: 0.9\nweight_decay: 0.1"),
        IP_NET % "param { lr_mult: 0 } param { lr_mult: 1 decay_mult: 0 }",
        W0,
        G,
    ),
    "one-block": oracle.OracleCase(
        "one-block",
        _sgd("weight_decay: 0.1"),
        IP_NET % "param { lr_mult: 2 decay_mult: 0 }",
        W0,
        G[:1],
    ),
    "multistep-boundary": oracle.OracleCase(
        "multistep-boundary",
        'type: "SGD"\nbase_lr: 1\nlr_policy: "multistep"\ngamma: 0.1\nstepvalue: 2\n'
        "stepvalue: 3\nmax_iter: 10\n",
        IP_NET % "",
        {k: np.zeros(s, f32) for k, s in SHAPES.items()},
        [{k: np.ones(s, f32) for k, s in SHAPES.items()}] * 4,
    ),
    "adam-first-step": oracle.OracleCase(
        "adam-first-step",
        'type: "Adam"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n',
        IP_NET % "",
        W0,
        G[:1],
    ),
    "clip": oracle.OracleCase("clip", _sgd("clip_gradients: 1"), IP_NET % "", W0, _clip_grads()),
    "iter-size": oracle.OracleCase("iter-size", _sgd("iter_size: 2"), IP_NET % "", W0, G[:1]),
    "shared-backward": oracle.OracleCase(
        "shared-backward",
        _sgd(lr="0.01"),
        SHARED_NET,
        {"ip1/0": np.array([[0.5, -0.25]], f32)},
        [{}],
        method="backward",
    ),
}

_MATRIX = matrix.matrix_cases()
_STEP_CHECK = [c for c in _MATRIX if c.iter_size == 3][:2] + [
    c for c in _MATRIX if c.factors["solver"] == "Adam"
][:1]


@pytest.fixture(scope="module")
def runs(caffe_root):
    """ONE chroot process: the hand cases, the goldens, the whole matrix, and a few matrix
    cases again through the step()+callback route."""
    goldens = matrix.golden_cases()
    cases = list(HAND.values())
    cases += [g.case.oracle_case() for g in goldens]
    cases += [c.oracle_case() for c in _MATRIX if c.name not in {g.case.name for g in goldens}]
    for c in _STEP_CHECK:
        o = c.oracle_case()
        cases.append(
            oracle.OracleCase(
                "step:" + o.name, o.solver_text, o.net_text, o.init, o.grads, method="step"
            )
        )
    return oracle.run_cases(cases, root=caffe_root)


# ------------------------------------------------------------------------- hand-checked facts


@pytest.mark.oracle
def test_plain_sgd_step_is_w_minus_lr_g(runs):
    (w1,) = runs["sgd-one-step"]
    for k in SHAPES:
        np.testing.assert_allclose(w1[k], W0[k] - f32(0.1) * G[0][k], rtol=1e-6, atol=1e-7)


@pytest.mark.oracle
def test_l2_decay_adds_wd_times_w(runs):
    (w1,) = runs["l2-decay"]
    for k in SHAPES:
        want = W0[k] - f32(0.1) * (G[0][k] + f32(0.1) * W0[k])
        np.testing.assert_allclose(w1[k], want, rtol=1e-6, atol=1e-7)


@pytest.mark.oracle
def test_l1_decay_adds_wd_sign_w_with_sign_0_equal_0(runs):
    (w1,) = runs["l1-decay"]
    for k in SHAPES:
        want = W0_L1[k] - f32(0.1) * f32(0.1) * np.sign(W0_L1[k])
        np.testing.assert_allclose(w1[k], want, rtol=1e-6, atol=1e-8)
        assert np.all(w1[k][W0_L1[k] == 0] == 0)


@pytest.mark.oracle
def test_lr_mult_0_never_moves_and_decay_mult_0_is_gradient_only(runs):
    traj = runs["lr-mult-0"]
    assert all(np.array_equal(w["fc1/0"], W0["fc1/0"]) for w in traj)
    # bias: lr_mult 1, decay_mult 0, momentum 0.9: h = 0.9 h + lr g; w -= h (no decay term).
    h = np.zeros(3, np.float64)
    w = W0["fc1/1"].astype(np.float64)
    for g in G:
        h = 0.9 * h + 0.1 * g["fc1/1"]
        w = w - h
    np.testing.assert_allclose(traj[-1]["fc1/1"], w, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
def test_one_param_block_for_two_blobs_leaves_bias_at_lr1_decay1(runs):
    (w1,) = runs["one-block"]
    np.testing.assert_allclose(
        w1["fc1/0"], W0["fc1/0"] - f32(0.2) * G[0]["fc1/0"], rtol=1e-6, atol=1e-7
    )
    want_b = W0["fc1/1"] - f32(0.1) * (G[0]["fc1/1"] + f32(0.1) * W0["fc1/1"])
    np.testing.assert_allclose(w1["fc1/1"], want_b, rtol=1e-6, atol=1e-7)


@pytest.mark.oracle
def test_update_k_uses_iter_k_and_multistep_switches_at_the_stepvalue(runs):
    traj = runs["multistep-boundary"]
    got = [float(w["fc1/1"][0]) for w in traj]
    # lr(0)=1, lr(1)=1, lr(2)=0.1 (iter 2 >= stepvalue 2), lr(3)=0.01.
    np.testing.assert_allclose(got, [-1.0, -2.0, -2.1, -2.11], rtol=1e-6)


@pytest.mark.oracle
def test_adam_first_step_is_about_lr_times_sign_g(runs):
    (w1,) = runs["adam-first-step"]
    for k in SHAPES:
        step = W0[k] - w1[k]
        np.testing.assert_allclose(step, 0.01 * np.sign(G[0][k]), rtol=1e-3, atol=1e-7)


@pytest.mark.oracle
def test_clip_scales_only_updates_whose_global_norm_exceeds_the_threshold(runs):
    w1, w2 = runs["clip"]
    g0, g1 = _clip_grads()
    n0 = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g0.values()))
    n1 = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g1.values()))
    assert n0 > 1 > n1
    for k in SHAPES:
        np.testing.assert_allclose(w1[k], W0[k] - 0.1 * g0[k] / n0, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w2[k], w1[k] - 0.1 * g1[k], rtol=1e-5, atol=1e-7)


@pytest.mark.oracle
def test_iter_size_divides_the_raw_sum(runs):
    (w1,) = runs["iter-size"]
    for k in SHAPES:
        np.testing.assert_allclose(w1[k], W0[k] - 0.1 * G[0][k] / 2, rtol=1e-6, atol=1e-7)


@pytest.mark.oracle
def test_shared_param_has_one_owner_and_gets_the_summed_gradient(runs):
    (w1,) = runs["shared-backward"]
    assert set(w1) == {"ip1/0"}  # the sharer ip2/0 is not a separate learnable param
    w = np.array([[0.5, -0.25]])
    s = 2 * w.sum()  # s = ip1(x) + ip2(x) with x = [1, 1]; dL/ds = s (EuclideanLoss, N = 1)
    summed = 2 * s * np.ones((1, 2))  # both layers add s * x into the one shared diff
    np.testing.assert_allclose(w1["ip1/0"], w - 0.01 * summed, rtol=1e-6)


@pytest.mark.oracle
def test_step_with_callback_equals_apply_update(runs):
    for c in _STEP_CHECK:
        for a, b in zip(runs[c.name], runs["step:" + c.name], strict=True):
            for k in a:
                assert np.array_equal(a[k], b[k]), (c.name, k)


# ----------------------------------------------------------------------- goldens and matrix


@pytest.mark.oracle
def test_goldens_still_match_a_fresh_caffe_run(runs, caffe_root):
    goldens = matrix.golden_cases()
    assert goldens
    assert all(g.caffe == oracle.caffe_package_version(caffe_root) for g in goldens)
    for g in goldens:
        fresh = runs[g.case.name]
        for k, (want, got) in enumerate(zip(g.weights, fresh, strict=True)):
            for key in want:
                np.testing.assert_allclose(
                    got[key],
                    want[key],
                    rtol=1e-6,
                    atol=1e-7,
                    err_msg=f"{g.case.name} update {k + 1} {key}",
                )


@pytest.mark.oracle
def test_every_matrix_case_runs_and_moves_what_it_should(runs):
    for c in _MATRIX:
        traj = runs[c.name]
        assert len(traj) == c.steps
        for key, (lr_mult, _) in c.multipliers.items():
            assert np.all(np.isfinite(traj[-1][key])), (c.name, key)
            moved = float(np.abs(traj[-1][key] - c.init[key]).max())
            assert (moved > 0) == (lr_mult != 0), (c.name, key, moved)


# --------------------------------------------------------------- nets, upgrade and verdicts

V1_NET = """name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "conv1" top: "ip1" blobs_lr: 0.5
         inner_product_param { num_output: 5 } }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2" param: "shared_w"
         inner_product_param { num_output: 5 bias_term: false } }
layers { name: "ip3" type: INNER_PRODUCT bottom: "ip2" top: "ip3" param: "shared_w"
         inner_product_param { num_output: 5 bias_term: false } }
"""
V1_EXPECT = {  # key: (shape, owner, lr_mult, decay_mult) as the V1 fields say
    "conv1/0": ((4, 3, 3, 3), "conv1/0", 1.0, 1.0),
    "conv1/1": ((4,), "conv1/1", 2.0, 0.0),
    "ip1/0": ((5, 144), "ip1/0", 0.5, 1.0),
    "ip1/1": ((5,), "ip1/1", 1.0, 1.0),
    "ip2/0": ((5, 5), "ip2/0", 1.0, 1.0),
    "ip3/0": ((5, 5), "ip2/0", None, None),
}

SHAPE_NET = """name: "shapes"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 4 kernel_size: 1 group: 2 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "c2" top: "c2" }
layer { name: "sc" type: "Scale" bottom: "c2" top: "c2" scale_param { bias_term: true } }
layer { name: "relu" type: "PReLU" bottom: "c2" top: "c2" }
layer { name: "ip" type: "InnerProduct" bottom: "c2" top: "ip"
        inner_product_param { num_output: 5 axis: 2 } }
layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 7 } } }
"""
SHAPE_EXPECT = [
    ("conv1", 0, (6, 3, 3, 3)),
    ("conv1", 1, (6,)),
    ("conv2", 0, (4, 3, 1, 1)),
    ("bn", 0, (4,)),
    ("bn", 1, (4,)),
    ("bn", 2, (1,)),
    ("sc", 0, (4,)),
    ("sc", 1, (4,)),
    ("relu", 0, (4,)),
    ("ip", 0, (5, 64)),
    ("ip", 1, (5,)),
    ("p", 0, (2, 7)),
]


@pytest.fixture(scope="module")
def tables(caffe_root):
    texts = [V1_NET, SHAPE_NET] + [matrix.net_text(m) for m in matrix.MULTS]
    texts.append("name: 'bad'\nlayer { name: 'x' type: 'NoSuchLayer' top: 'x' }\n")
    return oracle.caffe_param_tables(texts, root=caffe_root)


@pytest.mark.oracle
def test_caffe_net_blobs_shapes(caffe_root):
    assert oracle.caffe_net_blobs(SHAPE_NET, root=caffe_root) == SHAPE_EXPECT


@pytest.mark.oracle
def test_v1_net_read_by_caffe_has_the_v1_multipliers_and_sharing(tables):
    got = {b.key: (b.shape, b.owner, b.lr_mult, b.decay_mult) for b in tables[0]}
    assert got == V1_EXPECT


@pytest.mark.oracle
def test_matrix_nets_have_the_multipliers_matrix_declares(tables):
    for mults, table in zip(matrix.MULTS, tables[2:5], strict=True):
        want = matrix.MULTIPLIERS[mults]
        got = {b.key: (b.lr_mult, b.decay_mult) for b in table}
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
        for k, (lr, decay) in want.items():
            if lr != 0:
                assert got[k][1] == pytest.approx(decay), (mults, k)
        assert {b.key: b.shape for b in table} == matrix.SHAPES


@pytest.mark.oracle
def test_a_net_caffe_rejects_is_an_error_with_caffes_message(tables):
    err = tables[-1]
    assert isinstance(err, oracle.OracleError)
    assert "NoSuchLayer" in str(err)


@pytest.mark.oracle
def test_v1_upgrade_with_caffes_binary(caffe_root):
    from google.protobuf import text_format

    from caffe2tf.caffe._proto import caffe_pb2

    text = oracle.caffe_upgrade_net_text(V1_NET, root=caffe_root)
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    assert not net.layers
    # The legacy input/input_dim fields become an Input layer (upgrade_proto.cpp, UpgradeNetInput).
    assert [lay.name for lay in net.layer] == ["input", "conv1", "ip1", "ip2", "ip3"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert not net.input and "input_dim" not in text
    types = {lay.name: lay.type for lay in net.layer}
    assert types == {
        "input": "Input",
        "conv1": "Convolution",
        "ip1": "InnerProduct",
        "ip2": "InnerProduct",
        "ip3": "InnerProduct",
    }
    params = {
        lay.name: [
            (
                p.name,
                p.lr_mult if p.HasField("lr_mult") else None,
                p.decay_mult if p.HasField("decay_mult") else None,
            )
            for p in lay.param
        ]
        for lay in net.layer
    }
    assert params["conv1"] == [("", 1.0, 1.0), ("", 2.0, 0.0)]
    assert params["ip1"] == [("", 0.5, None)]
    assert params["ip2"] == [("shared_w", None, None)]
    assert params["ip3"] == [("shared_w", None, None)]


SOLVER_VERDICTS = [
    ('type: "Adam"\nbase_lr: 0.1\nlr_policy: "fixed"\n', True, "AdamSolver"),
    ('solver_type: NESTEROV\nbase_lr: 0.1\nlr_policy: "fixed"\n', True, "NesterovSolver"),
    ('solver_type: ADAM\ntype: "Adam"\nlr_policy: "fixed"\n', False, "cannot be both"),
    ('type: "AdaGrad"\nmomentum: 0.9\nlr_policy: "fixed"\n', False, "Momentum cannot be used"),
    ('type: "RMSProp"\nrms_decay: 1\nlr_policy: "fixed"\n', False, "rms_decay"),
    ("base_lr: 0.1\n", False, "Unknown learning rate policy"),
    ('lr_policy: "step"\nstepsize: 0\ngamma: 0.1\n', False, "stepsize"),
    ('lr_policy: "sigmoid"\nstepsize: 10\ngamma: -1\n', False, "gamma"),
    (
        'lr_policy: "fixed"\nweight_decay: 0.1\nregularization_type: "l2"\n',
        False,
        "Unknown regularization type",
    ),
    ('lr_policy: "fixed"\nregularization_type: "l2"\n', True, "SGDSolver"),
    ('type: "Adamm"\nlr_policy: "fixed"\n', False, "Unknown solver type"),
    ('net: "elsewhere.prototxt"\nlr_policy: "fixed"\n', True, "SGDSolver"),
    ('lr_policy: "fixed"\nno_such_field: 1\n', False, "no_such_field"),
]


@pytest.mark.oracle
def test_caffes_own_solver_verdicts(caffe_root):
    verdicts = oracle.caffe_read_solvers([t for t, _, _ in SOLVER_VERDICTS], root=caffe_root)
    for (text, ok, hint), verdict in zip(SOLVER_VERDICTS, verdicts, strict=True):
        assert verdict.ok == ok, (text, verdict)
        assert hint in (verdict.solver_class if ok else verdict.message), (text, verdict)


# -------------------------------------------------------------------------- failures are loud


@pytest.mark.oracle
def test_failures_are_loud(caffe_root):
    bad_solver = oracle.OracleCase(
        "bad", 'type: "AdaGrad"\nmomentum: 0.9\nlr_policy: "fixed"', IP_NET % "", W0, G[:1]
    )
    missing_init = oracle.OracleCase("missing", _sgd(), IP_NET % "", {"fc1/0": W0["fc1/0"]}, G[:1])
    with pytest.raises(oracle.OracleError) as info:
        oracle.run_cases([bad_solver, missing_init], root=caffe_root)
    text = str(info.value)
    assert "Momentum cannot be used with AdaGrad" in text
    assert "'missing'" in text and "fc1/1" in text
    # a solver with an inline net runs as written (net_text unused): Caffe's own failure
    inline = oracle.OracleCase("inline", 'type: "Adamm"\nnet_param { }\n', "", {}, [])
    with pytest.raises(oracle.OracleError, match="Unknown solver type"):
        oracle.run_cases([inline], root=caffe_root)


def test_retarget_solver_text_replaces_net_fields():
    text = 'net: "a.prototxt"\n  train_net : \'b\'  # old\nbase_lr: 0.1\n# net: "c"\n'
    out = oracle.retarget_solver_text(text, "/tmp/x.prototxt")
    lines = out.splitlines()
    assert lines[-1] == 'net: "/tmp/x.prototxt"'
    assert "base_lr: 0.1" in lines and '# net: "c"' in lines
    assert not any(line.strip().startswith(("net:", "train_net")) for line in lines[:-1])


def test_no_root_means_none(monkeypatch, tmp_path):
    monkeypatch.setenv(oracle.ROOT_ENV, str(tmp_path))
    assert oracle.caffe_root() is None
    with pytest.raises(oracle.CaffeRootMissing):
        oracle.run_cases([], root=tmp_path)


@pytest.mark.oracle
def test_solver_type_upgrade_with_caffes_binary(caffe_root):
    ok, both = oracle.caffe_upgrade_solver_texts(
        [
            'solver_type: RMSPROP\nbase_lr: 0.1\nlr_policy: "fixed"\n',
            'solver_type: ADAM\ntype: "Adam"\nlr_policy: "fixed"\n',
        ],
        root=caffe_root,
    )
    assert isinstance(ok, str) and 'type: "RMSProp"' in ok and "solver_type" not in ok
    assert isinstance(both, oracle.OracleError) and "cannot be both" in str(both)


# ------------------------------------------------------------- the oracle marker's behaviour

_INNER_TEST = """
import pytest

@pytest.mark.oracle
def test_needs_root():
    pass

@pytest.mark.oracle
def test_uses_fixture(caffe_root):
    assert caffe_root.is_dir()
"""


def _inner_pytest(tmp_path, env_extra: dict[str, str]):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(_INNER_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    oracle: real Caffe\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", oracle.ROOT_ENV)}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_oracle_tests_skip_without_a_root_outside_ci(tmp_path):
    proc = _inner_pytest(tmp_path, {oracle.ROOT_ENV: str(tmp_path / "no-root")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped" in proc.stdout and "build_caffe_root.sh" in proc.stdout


def test_oracle_tests_fail_loudly_in_ci_when_the_root_cannot_be_built(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = _inner_pytest(tmp_path, {"CI": "true", oracle.ROOT_ENV: str(blocker / "root")})
    assert proc.returncode != 0
    assert "skipped" not in proc.stdout
    assert "could not be built" in proc.stdout


# ----------------------------------------------------- --against caffe: streamed, flat in steps

BIG_NET = """name: "big"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 512 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        inner_product_param { num_output: 256 } }
"""


@pytest.mark.oracle
def test_a_streamed_run_equals_the_batched_one_and_holds_no_whole_run(caffe_root):
    """``run_streamed`` gives the weights ``run_cases`` gives, reading its gradients from an
    iterator and handing the weights back one update at a time: the host's peak traced memory
    over 24 updates of a 131k-parameter net stays under a quarter of the run's trajectory
    (24 x 0.5 MB), which a list of weights or a stacked gradient array would hold whole."""
    import tracemalloc

    shapes = {"fc1/0": (256, 512), "fc1/1": (256,)}
    init = _rand(3, shapes)
    steps = 24
    case = oracle.OracleCase("big", _sgd("momentum: 0.9"), BIG_NET, init)
    made = []

    def grads():  # noqa: ANN202
        for k in range(steps):
            made.append(k)
            yield _rand(100 + k, shapes, 0.1)

    tracemalloc.start()
    out = oracle.run_streamed(case, grads(), steps, root=caffe_root)
    first = next(out)
    last = first
    for w in out:
        last = w
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = steps * sum(int(np.prod(s)) for s in shapes.values()) * 4
    assert made == list(range(steps))
    assert peak < whole / 4, (peak, whole)
    batched = oracle.run_cases(
        [oracle.OracleCase("b", case.solver_text, BIG_NET, init,
                           [_rand(100 + k, shapes, 0.1) for k in range(steps)])],
        root=caffe_root,
    )["b"]  # fmt: skip
    for key in shapes:
        np.testing.assert_array_equal(first[key], batched[0][key])
        np.testing.assert_array_equal(last[key], batched[-1][key])
