"""UMT, Uni-Modal Teacher (Du et al., ICML 2023): the distillation loss against values
computed by hand, and teachers loaded from model.pt files written as the training loop
writes them, frozen over a training step."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers import METHODS, build_balancer, method_class
from mmbalance.balancers.umt import UMT, distillation_losses, umt_objective
from mmbalance.config import validate
from mmbalance.io import write_atomic
from mmbalance.models.multimodal import build_model
from mmbalance.step import training_step

BACKBONE = {"name": "resnet18", "width": 4}
SHAPES = {"audio": (33, 17), "video": (2, 3, 32, 32)}
SETTINGS = {"distill_weight": 10.0, "start_epoch": 0, "end_epoch": 1500}


def write_teacher(folder: Path, modality: str, backbone: dict = BACKBONE, seed: int = 1) -> Path:
    """A trained-looking unimodal model's model.pt, in the format of train.write_outputs:
    the state dict (cloned tensors) of build_model([m], ...) saved with torch.save."""
    torch.manual_seed(seed)
    model = build_model([modality], backbone, "late_linear", 3, True)
    with torch.no_grad():  # non-default BatchNorm statistics, so that eval mode visibly uses them
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    best_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = folder / f"{modality}_only" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(best_model, tmp))
    return path


def teacher_paths(folder: Path) -> dict[str, str]:
    return {m: str(write_teacher(folder, m, seed=i + 1)) for i, m in enumerate(("audio", "video"))}


def batch(seed: int = 0, n: int = 4):
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, *shape, generator=generator) for m, shape in SHAPES.items()}, torch.tensor([0, 1, 2, 0][:n])


def student(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(["audio", "video"], BACKBONE, "late_linear", 3, True)


# --- the loss on hand-computed numbers ----------------------------------------

def test_distillation_loss_worked_example():
    z_audio = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    z_video = torch.tensor([[0.5], [-1.0]], requires_grad=True)
    teacher = {"audio": torch.tensor([[0.0, 2.0], [1.0, 1.0]]), "video": torch.tensor([[0.0], [1.0]])}
    distances = distillation_losses({"audio": z_audio, "video": z_video}, teacher)
    # audio: differences [1, 0; 2, 3] -> (1 + 0 + 4 + 9) / 4 = 3.5; video: (0.25 + 4) / 2 = 2.125
    assert distances["audio"].item() == pytest.approx(3.5)
    assert distances["video"].item() == pytest.approx(2.125)

    fused = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    total, cross_entropy, _ = umt_objective(fused, labels, {"audio": z_audio, "video": z_video}, teacher, 10.0)
    # CE: (log(1 + 2 e^-2) + log 3) / 2 = (0.2395448 + 1.0986123) / 2
    assert cross_entropy.item() == pytest.approx(0.6690785, abs=1e-6)
    assert total.item() == pytest.approx(0.6690785 + 10 * (3.5 + 2.125), abs=1e-5)
    total.backward()
    # d/dz 10 * mean((z - t)^2) = 10 * 2 (z - t) / (B d)
    assert torch.allclose(z_audio.grad, torch.tensor([[5.0, 0.0], [10.0, 15.0]]))
    assert torch.allclose(z_video.grad, torch.tensor([[5.0], [-20.0]]))


def test_no_gradient_reaches_the_teacher_features():
    z = torch.zeros(2, 3, requires_grad=True)
    t = torch.ones(2, 3, requires_grad=True)
    distillation_losses({"audio": z}, {"audio": t})["audio"].backward()
    assert t.grad is None and z.grad is not None


# --- declaration --------------------------------------------------------------

def test_teachers_are_the_unimodal_baselines_and_the_schema_takes_paths(tmp_path):
    assert UMT.TEACHERS == {"audio": "audio_only", "video": "video_only"}
    for modality, method in UMT.TEACHERS.items():
        assert method in METHODS and method_class(method).modalities == (modality,)
    assert method_class("umt") is UMT and not UMT.trains_unimodal_heads and UMT.needs({}) == set()
    config = validate({"methods": {"umt": {"teacher_models": {"audio": "a/model.pt", "video": "v/model.pt"}}}})
    assert config["methods"]["umt"] == {"distill_weight": 10.0, "start_epoch": 0, "end_epoch": 1500,
                                        "teacher_models": {"audio": "a/model.pt", "video": "v/model.pt"}}
    assert validate({})["methods"]["umt"]["teacher_models"] == {}
    assert set(UMT.SEARCH_SPACE) == {"distill_weight"} and UMT.SEARCH_SPACE["distill_weight"]["source"]


# --- teachers from model.pt ---------------------------------------------------

def test_setup_loads_frozen_teacher_encoders_from_model_pt(tmp_path):
    paths = teacher_paths(tmp_path)
    model = student()
    balancer = build_balancer("umt", SETTINGS | {"teacher_models": paths})
    balancer.setup(model)
    model_params = {id(p) for p in model.parameters()}
    inputs, _ = batch()
    for m, path in paths.items():
        teacher = balancer.teachers[m]
        saved = torch.load(path, weights_only=True)
        assert not teacher.training
        for name, value in teacher.state_dict().items():  # weights and BatchNorm statistics
            assert torch.equal(value, saved[f"encoders.{m}.{name}"]), name
        assert all(not p.requires_grad and id(p) not in model_params for p in teacher.parameters())
        assert not torch.equal(teacher.state_dict()["trunk.stem.0.weight"], model.encoders[m].state_dict()["trunk.stem.0.weight"])
        # The teacher's features are those of the unimodal model it came from, in eval mode.
        unimodal = build_model([m], BACKBONE, "late_linear", 3, True)
        unimodal.load_state_dict(saved)
        unimodal.eval()
        with torch.no_grad():
            expected = unimodal(inputs)
        assert torch.allclose(balancer.teacher_features(inputs)[m], expected.features[m])
    assert balancer.state_dict() == {}  # inputs, not state: nothing of the teachers is checkpointed


def test_teachers_stay_frozen_over_a_training_step(tmp_path):
    model = student()
    balancer = build_balancer("umt", SETTINGS | {"teacher_models": teacher_paths(tmp_path)})
    balancer.setup(model)
    before = {m: {k: v.clone() for k, v in t.state_dict().items()} for m, t in balancer.teachers.items()}
    encoder_before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs, labels = batch()
    model.train()
    result = training_step(model, balancer, optimizer, inputs, labels, 0)

    for m, teacher in balancer.teachers.items():
        assert not teacher.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        for name, value in teacher.state_dict().items():  # weights and BatchNorm running statistics
            assert torch.equal(value, before[m][name]), (m, name)
    assert any(not torch.equal(v, encoder_before[k]) for k, v in model.encoders.state_dict().items())

    # The logged objective is CE + 10 * sum of the MSEs to the teachers on the same inputs.
    teacher = balancer.teacher_features(inputs)
    distances = {m: F.mse_loss(result.out.features[m].detach(), teacher[m]).item() for m in teacher}
    cross_entropy = F.cross_entropy(result.out.fused.detach(), labels).item()
    assert result.logs["loss_fused"] == pytest.approx(cross_entropy, rel=1e-6)
    assert {k: result.logs[f"distill_{k}"] for k in distances} == pytest.approx(distances, rel=1e-6)
    assert result.loss == pytest.approx(cross_entropy + 10 * sum(distances.values()), rel=1e-6)
    assert math.isfinite(result.loss) and all(d > 0 for d in distances.values())


def test_the_distillation_term_trains_the_encoders_only(tmp_path):
    paths = teacher_paths(tmp_path)
    grads = {}
    for weight in (0.0, 10.0):
        model = student()
        balancer = build_balancer("umt", SETTINGS | {"distill_weight": weight, "teacher_models": paths})
        balancer.setup(model)
        inputs, labels = batch()
        out = balancer.forward(model, inputs, labels, 0)
        balancer.loss(out, labels, 0)[0].backward()
        grads[weight] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert set(grads[0.0]) == set(grads[10.0])
    for name in grads[0.0]:
        if name.startswith("fusion."):  # the fused logits do not depend on the teachers
            assert torch.allclose(grads[0.0][name], grads[10.0][name]), name
    assert not torch.allclose(grads[0.0]["encoders.audio.trunk.stem.0.weight"], grads[10.0]["encoders.audio.trunk.stem.0.weight"])
    assert not torch.allclose(grads[0.0]["encoders.video.trunk.stem.0.weight"], grads[10.0]["encoders.video.trunk.stem.0.weight"])


def test_outside_the_window_the_loss_is_the_fused_cross_entropy(tmp_path):
    model = student()
    balancer = build_balancer("umt", SETTINGS | {"start_epoch": 2, "end_epoch": 3, "teacher_models": teacher_paths(tmp_path)})
    balancer.setup(model)
    inputs, labels = batch()
    out = balancer.forward(model, inputs, labels, 1)
    loss, logs = balancer.loss(out, labels, 1)
    assert loss.item() == pytest.approx(F.cross_entropy(out.fused, labels).item()) and set(logs) == {"loss_fused"}
    out = balancer.forward(model, inputs, labels, 2)
    assert set(balancer.loss(out, labels, 2)[1]) == {"loss_fused", "distill_audio", "distill_video"}


def test_loss_without_the_teachers_forward_is_refused(tmp_path):
    model = student()
    balancer = build_balancer("umt", SETTINGS | {"teacher_models": teacher_paths(tmp_path)})
    balancer.setup(model)
    inputs, labels = batch()
    with pytest.raises(RuntimeError, match="UMT.forward"):
        balancer.loss(model(inputs), labels, 0)


def test_a_resumed_run_reloads_the_same_teachers(tmp_path):
    paths = teacher_paths(tmp_path)
    inputs, _ = batch()
    first, resumed = (build_balancer("umt", SETTINGS | {"teacher_models": paths}) for _ in range(2))
    first.setup(student(0))
    resumed.setup(student(5))  # another initialisation of the student: the teachers come from the files
    resumed.load_state_dict(first.state_dict())
    a, b = first.teacher_features(inputs), resumed.teacher_features(inputs)
    assert all(torch.equal(a[m], b[m]) for m in a)


# --- errors naming the file and the modality -----------------------------------

def test_a_missing_teacher_file_is_named(tmp_path):
    paths = teacher_paths(tmp_path) | {"audio": str(tmp_path / "absent" / "model.pt")}
    balancer = build_balancer("umt", SETTINGS | {"teacher_models": paths})
    with pytest.raises(ValueError, match=r"'audio'.*absent/model\.pt.*no such file.*audio_only"):
        balancer.setup(student())


def test_no_teacher_entry_is_named(tmp_path):
    balancer = build_balancer("umt", SETTINGS | {"teacher_models": {"audio": str(write_teacher(tmp_path, "audio"))}})
    with pytest.raises(ValueError, match=r"'video'.*teacher_models.*video_only"):
        balancer.setup(student())
    with pytest.raises(ValueError, match="'audio'"):
        build_balancer("umt", SETTINGS | {"teacher_models": {}}).setup(student())


def test_a_teacher_of_another_width_is_refused_naming_it(tmp_path):
    paths = teacher_paths(tmp_path)
    paths["video"] = str(write_teacher(tmp_path / "wide", "video", {"name": "resnet18", "width": 8}))
    with pytest.raises(ValueError, match=r"'video'.*wide/video_only/model\.pt.*shapes differ"):
        build_balancer("umt", SETTINGS | {"teacher_models": paths}).setup(student())


def test_a_teacher_of_the_other_modality_is_refused(tmp_path):
    paths = teacher_paths(tmp_path)
    paths["audio"] = paths["video"]  # holds encoders.video.*, no encoders.audio.*
    with pytest.raises(ValueError, match=r"'audio'.*holds no encoders\.audio\.\* weights"):
        build_balancer("umt", SETTINGS | {"teacher_models": paths}).setup(student())


def test_a_file_that_is_not_plain_weights_is_never_unpickled(tmp_path):
    paths = teacher_paths(tmp_path)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"encoders.audio.trunk.stem.0.weight": Path("not a tensor")}, unsafe)  # a class weights_only refuses
    paths["audio"] = str(unsafe)
    with pytest.raises(ValueError, match=r"'audio'.*unsafe\.pt.*does not load safely"):
        build_balancer("umt", SETTINGS | {"teacher_models": paths}).setup(student())


def test_a_teacher_for_a_modality_the_model_lacks_is_refused(tmp_path):
    paths = teacher_paths(tmp_path) | {"depth": str(tmp_path / "depth.pt")}
    with pytest.raises(ValueError, match="depth"):
        build_balancer("umt", SETTINGS | {"teacher_models": paths}).setup(student())


# --- end to end: the teachers are the unimodal cells' model.pt ----------------

def test_umt_trains_on_the_unimodal_cells_model_pt(tiny_store, train_settings, tmp_path):
    from mmbalance.train import train

    paths = {}
    for modality, method in UMT.TEACHERS.items():
        out = tmp_path / method
        train(tiny_store, train_settings(method, epochs=1), out, tmp_path / "checkpoints" / method / "last.pt")
        paths[modality] = str(out / "model.pt")
    settings = train_settings("umt", epochs=2)
    settings["method_settings"] = settings["method_settings"] | {"teacher_models": paths}  # what the workflow fills in
    summary = train(tiny_store, settings, tmp_path / "umt", tmp_path / "checkpoints" / "umt" / "last.pt")
    history = (tmp_path / "umt" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert summary["epochs"] == 2 and {"balance/distill_audio", "balance/distill_video", "balance/loss_fused"} <= set(header)
    model_pt = torch.load(tmp_path / "umt" / "model.pt", weights_only=True)
    assert set(model_pt) == set(build_model(["audio", "video"], BACKBONE, "late_linear", 3, True).state_dict())  # no teacher inside
