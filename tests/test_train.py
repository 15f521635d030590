"""Training loops: the loss goes down, a stopped run resumes to the uninterrupted result, splits are disjoint."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from pydcr.demo import FaceArrays, split
from pydcr.models import DCR
from pydcr.train import TrunkConfig, get_preset, train_branches, train_trunk
from pydcr.train.branch import trunk_features

from module_outputs import output_dtypes

TINY = TrunkConfig(width=0.125, feature_dim=16, input_size=(40, 40), batch_size=8, epochs=2, lr=0.02,
                   low_sizes=(12, 6))


def toy_faces(n=32, classes=4, seed=0):
    """Images whose class sets their mean colour: a task a tiny trunk can learn in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = rng.integers(0, 60, size=(n, 40, 40, 3))
    images = np.clip(base + 45 * labels[:, None, None, None], 0, 255).astype(np.uint8)
    return FaceArrays(images, labels), classes


def test_trunk_loss_decreases(tmp_path):
    data, classes = toy_faces()
    train_trunk(data, classes, replace(TINY, epochs=4), tmp_path, progress=False)
    losses = [float(l.split('"loss": ')[1].split(",")[0]) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_trunk_trains_in_cpu_bf16_autocast(tmp_path):
    data, classes = toy_faces()
    with output_dtypes() as computed:
        run = train_trunk(data, classes, replace(TINY, epochs=4), tmp_path, progress=False, amp=True)
    assert torch.bfloat16 in computed  # autocast was in force, not only asked for
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in run.trunk.parameters())  # autocast leaves the weights float32
    # its cached features for step 2, in autocast or not, agree to bfloat16's precision
    exact = trunk_features(run.trunk, data, (12,), progress=False, amp=False)
    with output_dtypes() as computed:
        fast = trunk_features(run.trunk, data, (12,), progress=False, amp=True)
    assert torch.bfloat16 in computed
    for a, b in ((exact[0], fast[0]), (exact[1][12], fast[1][12])):
        assert b.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_tensorboard_scalars_equal_the_metrics_lines(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    data, classes = toy_faces()
    train_trunk(data, classes, replace(TINY, epochs=2), tmp_path, progress=False, tensorboard=True)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(f"trunk/{k}" for k in lines[0] if k != "epoch")
    for name in lines[0]:
        if name != "epoch":
            logged = [(e.step, e.value) for e in events.Scalars(f"trunk/{name}")]
            assert logged == [(line["epoch"], pytest.approx(line[name], rel=1e-6)) for line in lines]


def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path):
    data, classes = toy_faces()
    torch.use_deterministic_algorithms(True)
    try:
        whole = train_trunk(data, classes, TINY, tmp_path / "whole", progress=False)

        class Stop(Exception):
            pass

        def stop_at_step_5(step):
            if step == 5:
                raise Stop

        with pytest.raises(Stop):  # a killed process: only the epoch-end checkpoint survives
            train_trunk(data, classes, TINY, tmp_path / "cut", progress=False, on_step=stop_at_step_5)
        with open(tmp_path / "cut" / "metrics.jsonl", "a") as log:
            log.write('{"epoch": 2, "lo')  # and a metrics line cut off mid-write
        resumed = train_trunk(data, classes, TINY, tmp_path / "cut", progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed.finished and resumed.epochs_done == TINY.epochs
    for (k, a), (_, b) in zip(whole.trunk.state_dict().items(), resumed.trunk.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    logged = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in logged] == list(range(1, TINY.epochs + 1))


def test_a_run_resumes_only_with_its_own_settings(tmp_path):
    from pydcr.train.checkpoint import OtherRunError

    data, classes = toy_faces()
    train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False)
    for config, seed, message in [(replace(TINY, epochs=1, width=0.0625), 0, "width 0.125 vs 0.0625"),
                                  (TINY, 0, "epochs 1 vs 2"),  # the old schedule's lr decay would carry on
                                  (replace(TINY, epochs=1, batch_size=4), 0, "batch_size 8 vs 4"),
                                  (replace(TINY, epochs=1), 1, "seed 0 vs 1")]:
        with pytest.raises(OtherRunError, match=re.escape(f"{tmp_path} holds a run with other settings ({message}); ")):
            train_trunk(data, classes, config, tmp_path, seed=seed, progress=False)
    with pytest.raises(OtherRunError, match="identities 4 vs 2"):
        train_trunk(*toy_faces(classes=2), replace(TINY, epochs=1), tmp_path, progress=False)
    # As many identities, other images of them: by default the labels tell the data apart.
    other = FaceArrays(data.images[::-1].copy(), np.sort(data.labels))
    with pytest.raises(OtherRunError, match=r"\(data labels:\w+ vs labels:\w+\)"):
        train_trunk(other, classes, replace(TINY, epochs=1), tmp_path, progress=False)
    with pytest.raises(OtherRunError, match=r"\(data labels:\w+ vs people:x\)"):  # a caller's own key
        train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False, data_key="people:x")
    # A checkpoint that records no data (an earlier version's): resumed by default, refused to a caller's key.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["data"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(OtherRunError, match="does not record which data it trained on"):
        train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False, data_key="people:x")
    assert train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False).finished
    assert train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False).finished  # the same: resumes


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    from pydcr.train.checkpoint import CorruptCheckpointError

    data, classes = toy_faces()
    train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=f"cannot read checkpoint {re.escape(str(ckpt))} .*delete it") as err:
        train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False)
    assert "\n" not in str(err.value)


def test_branches_are_added_to_the_model(tmp_path):
    data, classes = toy_faces()
    run = train_trunk(data, classes, replace(TINY, epochs=1), tmp_path, progress=False)
    model = DCR(run.trunk)
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    train_branches(model, data, classes, [8, 12], replace(get_preset("demo").branch, dim=8, epochs=2), progress=False)
    assert model.resolutions == [8, 12]
    assert model.branch(8).hr_branch.classifier is None  # deployed without classifiers
    for k, v in model.trunk.state_dict().items():  # step 2 trains the pairs only
        assert torch.equal(v, trunk_before[k]), k


def test_training_refuses_inputs_it_cannot_train_on(tmp_path):
    from pydcr.train.branch import train_branch_pair

    data, classes = toy_faces()
    with pytest.raises(ValueError, match="no images to train on"):
        train_trunk(torch.utils.data.Subset(data, []), classes, TINY, tmp_path, progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()
    config = replace(get_preset("demo").branch, dim=8, epochs=1)
    hr, labels = torch.randn(20, 16), torch.arange(20) % 4
    for lr, y in ((torch.randn(30, 16), labels), (torch.randn(20, 8), labels), (torch.randn(20, 16), labels[:10])):
        with pytest.raises(ValueError, match="same N images"):
            train_branch_pair(hr, lr, y, 4, config, progress=False)
    with pytest.raises(ValueError, match="no features"):
        train_branch_pair(hr[:0], hr[:0], labels[:0], 4, config, progress=False)


def test_demo_split_is_identity_disjoint():
    labels = np.repeat(np.arange(100), 4)
    images = np.zeros((len(labels), 8, 8, 3), dtype=np.uint8)
    s = split(images, labels)
    test_people = np.unique(labels)[::5]
    assert len(s.train) == (~np.isin(labels, test_people)).sum()
    assert s.num_classes == 80 and s.train.labels.max() == 79
    np.testing.assert_array_equal(s.train_people, np.setdiff1d(np.unique(labels), test_people))  # what it records
    test_labels = labels[np.isin(labels, test_people)]
    for f in range(10):  # each person's pairs sit in one fold
        people = set(test_labels[s.pairs[s.folds == f].ravel()])
        others = set(test_labels[s.pairs[s.folds != f].ravel()])
        assert people and not people & others
    assert (test_labels[s.pairs[s.same, 0]] == test_labels[s.pairs[s.same, 1]]).all()
    assert (test_labels[s.pairs[~s.same, 0]] != test_labels[s.pairs[~s.same, 1]]).all()


def test_demo_split_needs_two_people_per_fold():
    labels = np.repeat(np.arange(50), 4)
    with pytest.raises(ValueError, match="need two per fold"):
        split(np.zeros((len(labels), 8, 8, 3), dtype=np.uint8), labels)


def test_progress_reads_figures_at_most_every_interval(monkeypatch):
    from pydcr.train import progress

    clock = iter([0.0, 0.1, 0.2, 0.6, 0.7, 1.2])
    monkeypatch.setattr(progress, "monotonic", lambda: next(clock))
    reads = []
    with progress.Progress(6, "t", interval=0.5) as bar:
        for step in range(6):
            bar.update(lambda step=step: reads.append(step) or {"loss": 1.0})
        assert bar._bar.n == 6
    assert reads == [0, 3, 5]
    quiet = []
    with progress.Progress(3, "t", enabled=False) as bar:
        for _ in range(3):
            bar.update(lambda: quiet.append(1) or {})
    assert quiet == []  # a hidden bar never reads the figures (no device waits)


def test_fine_tune_starts_from_the_given_run(tmp_path):
    data, classes = toy_faces()
    run = train_trunk(data, classes, replace(TINY, epochs=1), tmp_path / "base", progress=False)
    # At learning rate 0 a fine-tune leaves the weights where it found them.
    tuned = train_trunk(data, classes, replace(TINY, epochs=1, lr=0.0, low_sizes=(8,)), tmp_path / "ft",
                        progress=False, init=run)
    for name, value in run.trunk.state_dict().items():
        assert torch.equal(tuned.trunk.state_dict()[name], value), name
    assert torch.equal(tuned.head.weight, run.head.weight)
    with pytest.raises(ValueError, match="classifies 4 identities, these data 5"):
        train_trunk(data, 5, TINY, tmp_path / "other", progress=False, init=run)


def test_resnet_baselines_train_on_hr_then_fine_tune(tmp_path):
    from pydcr.reproduce import train_resnet_baselines
    from pydcr.train.checkpoint import load_checkpoint

    data, classes = toy_faces()
    trunks = train_resnet_baselines(data, classes, replace(TINY, epochs=3), [8, 12], tmp_path, progress=False)
    assert list(trunks) == ["ResNet", "ResNet-FT"]
    resnet = load_checkpoint(tmp_path / "resnet" / "checkpoint.pt")
    tuned = load_checkpoint(tmp_path / "resnet-ft" / "checkpoint.pt")
    assert tuple(resnet["config"]["low_sizes"]) == () and resnet["epoch"] == 3  # HR faces only
    assert tuple(tuned["config"]["low_sizes"]) == (8, 12) and tuned["epoch"] == 1  # a third of the epochs
    assert tuned["config"]["lr"] == pytest.approx(TINY.lr / 10)
    for name, value in trunks["ResNet"].state_dict().items():  # the fine-tune moved every layer
        assert torch.equal(resnet["trunk"][name], value)
        assert not torch.equal(tuned["trunk"][name], value), name


def test_branch_pair_training_couples_and_separates():
    """Step 2 on trunk-like features: 4 identities; the LR features are the HR ones, shrunk and
    noisy, as a degraded face's are. Training must couple each image's HR and LR features (the
    coupling term) and tell the identities apart in both branches (the softmax terms)."""
    from pydcr.train import BranchConfig
    from pydcr.train.branch import train_branch_pair

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 4
    identity = torch.randn(4, 32, generator=g)
    hr = identity[labels] + 0.5 * torch.randn(64, 32, generator=g)
    lr = 0.5 * hr + 0.8 * torch.randn(64, 32, generator=g)
    config = BranchConfig(dim=16, batch_size=16, epochs=30, lr=0.05)

    def coupling_and_accuracy(pair):
        with torch.no_grad():
            x, z = pair.hr(hr), pair.lr(lr)
            coupling = torch.nn.functional.cosine_similarity(x, z).mean().item()
            acc = [(branch.logits(f).argmax(1) == labels).float().mean().item()
                   for branch, f in ((pair.hr_branch, x), (pair.lr_branch, z))]
        return coupling, acc

    untrained = train_branch_pair(hr, lr, labels, 4, replace(config, epochs=0), progress=False)
    trained = train_branch_pair(hr, lr, labels, 4, config, progress=False)
    (c0, acc0), (c1, acc1) = coupling_and_accuracy(untrained), coupling_and_accuracy(trained)
    assert c1 > c0 + 0.1, (c0, c1)
    assert min(acc1) > 0.9 and min(acc1) > max(acc0), (acc0, acc1)


def test_the_logged_rate_is_the_one_trained_at(tmp_path):
    data, classes = toy_faces()  # 4 steps an epoch: the milestone falls between the two epochs
    train_trunk(data, classes, replace(TINY, milestones=(0.5,)), tmp_path / "two", progress=False)
    assert [json.loads(line)["lr"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()] == \
        pytest.approx([0.02, 0.002])
    # One step in all: the milestones (0.6, 0.85 of it) round to no step, not to a cut before it.
    train_trunk(data, classes, replace(TINY, epochs=1, batch_size=64), tmp_path / "one", progress=False)
    assert json.loads((tmp_path / "one" / "metrics.jsonl").read_text())["lr"] == pytest.approx(0.02)


def test_branch_training_keeps_its_centers_to_itself(monkeypatch):
    # Inside a distributed job (one process trains the pairs): no collective, the centers are local.
    import pydcr.losses
    from pydcr.train.branch import train_branch_pair

    monkeypatch.setattr(pydcr.losses.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(pydcr.losses.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(pydcr.losses, "all_reduce_center_stats", lambda *a, **k: pytest.fail("a collective ran"))
    torch.manual_seed(0)
    hr, labels = torch.randn(24, 16), torch.arange(24) % 4
    config = replace(get_preset("demo").branch, dim=8, epochs=1, batch_size=8)
    pair = train_branch_pair(hr, hr + 0.1 * torch.randn(24, 16), labels, 4, config, progress=False)
    assert pair.dim == 8
