"""MUSCLE step 2 mechanics: the cyclic reshuffled schedule, L2-SP, the replay memory, the task metrics."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medcoss_monai.apps.muscle.multitask_trainer import MultiTaskKeys
from medcoss_monai.apps.muscle.task_evaluation import classification_task_metrics, detection_metrics, segmentation_metrics
from medcoss_monai.apps.muscle.l2sp import L2SPPenalty, l2sp_term
from medcoss_monai.apps.muscle.replay import TaskReplay, memory_items
from medcoss_monai.apps.muscle.task_schedule import CyclicTaskSchedule, visit_order

TASKS = ["cls", "seg", "det", "bone"]


def test_every_round_visits_every_task_once_in_a_fresh_seeded_order():
    order = visit_order(TASKS, rounds=5, seed=3)
    rounds = [order[i : i + len(TASKS)] for i in range(0, len(order), len(TASKS))]
    assert len(rounds) == 5 and all(sorted(r) == sorted(TASKS) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, "the order is reshuffled between rounds"
    assert visit_order(TASKS, 5, seed=3) == order, "the same seed gives the same schedule (resume recomputes it)"
    assert visit_order(TASKS, 5, seed=4) != order
    # MUSCLE--: one order, kept
    assert visit_order(TASKS, 2, seed=3, reshuffle=False) == TASKS + TASKS


def test_schedule_switches_the_engine_to_the_visited_tasks_data():
    loaders = {t: [{"task": t, "i": i} for i in range(3)] for t in TASKS[:3]}
    schedule = CyclicTaskSchedule(loaders, rounds=2, seed=0)
    seen = []
    engine = Engine(lambda e, batch: seen.append((e.state.epoch, e.state.task, batch["task"])))
    engine.add_event_handler(Events.EPOCH_STARTED, schedule)
    engine.run(loaders["cls"], max_epochs=len(schedule.order), epoch_length=2)
    assert [task for _, task, _ in seen[::2]] == schedule.order
    assert all(task == batch_task for _, task, batch_task in seen), "every batch of a visit comes from its task"
    assert schedule.visit(4) == (2, schedule.order[3])
    # tasks visited before the 4th visit, without the visited task itself
    assert schedule.visited_before(4) == [t for t in dict.fromkeys(schedule.order[:3]) if t != schedule.order[3]]
    assert schedule.visited_before(1) == []


def test_schedule_refuses_a_trainer_of_another_length():
    schedule = CyclicTaskSchedule({"a": [1], "b": [2]}, rounds=3)
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 5
    with pytest.raises(ValueError, match="6 visits"):
        schedule.attach(engine)


def test_l2sp_term_on_known_values():
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0]]))
        module.bias.fill_(3.0)
    anchor = {"weight": torch.tensor([[0.0, 0.0]]), "bias": torch.tensor([1.0])}
    # 0.5 * 0.1 * ((1 + 4) + 4) = 0.45
    assert float(l2sp_term(module, anchor, 0.1).detach()) == pytest.approx(0.45)
    term = l2sp_term(module, anchor, 0.1)
    term.backward()
    assert torch.allclose(module.weight.grad, torch.tensor([[0.1, 0.2]]))  # weight * (w - w0)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(2, 1, bias=False)


def test_l2sp_handler_anchors_at_the_start_or_at_each_visit_and_adds_its_term():
    terms = []
    net = _Net()

    def step(engine, batch):
        engine.state.output = {MultiTaskKeys.LOSS: torch.zeros(()), MultiTaskKeys.LOSS_TERMS: {}}
        with torch.no_grad():
            net.backbone.weight.add_(1.0)  # training moves the weights by 1 per step
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        terms.append(engine.state.output[MultiTaskKeys.LOSS_TERMS].get("l2sp_loss"))

    def run(weight, anchor="start"):
        terms.clear()
        with torch.no_grad():
            net.backbone.weight.zero_()
        engine = Engine(step)
        engine.register_events(*IterationEvents)
        engine.network = net
        L2SPPenalty(weight=weight, anchor=anchor).attach(engine)
        engine.run([0, 1], max_epochs=2)
        return [None if t is None else float(t) for t in terms]

    # each of 2 weights moves 1 per step: 0.5 * 2 * 2 * d^2 with d the distance from the anchor
    assert run(2.0) == pytest.approx([2.0, 8.0, 18.0, 32.0]), "anchored at the weights the run started from"
    assert run(2.0, "visit") == pytest.approx([2.0, 8.0, 2.0, 8.0]), "the switch re-anchors at each visit"
    assert run(0.0) == [None] * 4, "weight 0 switches L2-SP off"
    with pytest.raises(ValueError, match="l2sp_anchor"):
        L2SPPenalty(weight=1.0, anchor="epoch")


def test_replay_memory_is_seeded_and_sized():
    items = [{"image": f"{i}.png", "label": i % 2} for i in range(10)]
    memory = memory_items(items, 4, seed=1)
    assert len(memory) == 4 and memory == memory_items(items, 4, seed=1)
    assert memory != memory_items(items, 4, seed=2)
    assert all(m in items for m in memory)
    assert memory_items(items, 50, seed=1) == items and memory_items(items, 0) == []


def test_replay_switch_replays_only_tasks_visited_before():
    schedule = CyclicTaskSchedule({"a": [0], "b": [0], "c": [0]}, rounds=2, seed=0, reshuffle=False)
    replayed = []

    class _Trainer(Engine):
        def task_loss(self, task, batch):
            replayed.append((self.state.epoch, task, batch))
            return torch.tensor(1.0)

    def step(engine, batch):
        engine.state.output = {MultiTaskKeys.LOSS: torch.zeros(()), MultiTaskKeys.LOSS_TERMS: {}}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

    engine = _Trainer(step)
    engine.register_events(*IterationEvents)
    engine.add_event_handler(Events.EPOCH_STARTED, schedule)
    memories = {t: [f"memory of {t}"] for t in "abc"}
    TaskReplay(memories, schedule, weight=0.5).attach(engine)
    engine.run([0], max_epochs=6, epoch_length=2)
    by_epoch = {}
    for epoch, task, batch in replayed:
        assert batch == f"memory of {task}"
        by_epoch.setdefault(epoch, set()).add(task)
    assert 1 not in by_epoch, "nothing is replayed during the first visit"
    assert by_epoch[2] == {"a"} and by_epoch[3] == {"a", "b"}
    assert all(schedule.order[e - 1] not in tasks for e, tasks in by_epoch.items()), "a task never replays itself"
    replayed.clear()
    off = _Trainer(step)
    off.register_events(*IterationEvents)
    off.add_event_handler(Events.EPOCH_STARTED, schedule)
    TaskReplay(memories, schedule, weight=0.0).attach(off)
    off.run([0], max_epochs=6, epoch_length=2)
    assert replayed == [], "weight 0 switches replay off"


def _det(boxes, labels, scores=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


def test_detection_metric_on_known_boxes():
    targets = [_det([[10, 10, 50, 50], [60, 60, 100, 100]], [0, 1]), _det([[5, 5, 30, 30]], [1])]
    perfect = [_det(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in targets]
    m = detection_metrics(perfect, targets, ["lung", "lesion"])
    assert m["map50"] == pytest.approx(1.0) and m["ap50_lung"] == pytest.approx(1.0) and m["score"] == m["map50"]
    # class "lesion": one of its two boxes found (IoU 0.81), the other missed; a box off target (IoU < 0.5) for "lung"
    half = [_det([[10, 10, 50, 50], [62, 62, 100, 100]], [0, 1], [0.9, 0.8]), _det([[60, 60, 90, 90]], [0], [0.7])]
    m = detection_metrics(half, targets, ["lung", "lesion"])
    # COCO's 101 recall points: precision 1 up to recall 0.5 (51 points), then nothing -> 51 / 101
    assert m["ap50_lesion"] == pytest.approx(51 / 101, abs=1e-4)
    # "lung": the true positive (score 0.9) ranks above the false positive: AP 1
    assert m["ap50_lung"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx((1.0 + 51 / 101) / 2, abs=1e-4)
    # a class without ground truth has no AP entry and does not count in the mean
    only_lung = detection_metrics(perfect[:1], [_det([[10, 10, 50, 50]], [0])], ["lung", "lesion"])
    assert "ap50_lesion" not in only_lung and only_lung["map50"] == pytest.approx(1.0)


def test_classification_and_segmentation_metrics_on_known_values():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.35, 0.65]])
    labels = torch.tensor([0, 1, 0, 1, 1])
    m = classification_task_metrics(probs, labels)
    # predictions 0,1,1,0,1: TP 2, FN 1, TN 1, FP 1
    assert m["ACC"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 2)
    # positives' scores 0.8, 0.3, 0.65 vs negatives' 0.1, 0.6: 5 of 6 pairs ranked right (only 0.3 < 0.6)
    assert m["AUC"] == pytest.approx(5 / 6) and m["score"] == m["AUC"]
    pred = torch.tensor([[[0, 1, 1], [0, 1, 0]]])
    label = torch.tensor([[[0, 1, 0], [0, 1, 1]]])
    s = segmentation_metrics(pred, label, 2)
    assert s["dice"] == pytest.approx(2 * 2 / (3 + 3)) and s["miou"] == pytest.approx(2 / 4)


class _TwoHeads(torch.nn.Module):
    """Two classification heads on a shared linear backbone: the least a multi-task trainer steps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Linear(4, 3)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(3, 2) for t in "ab"})
        self.tasks = ["a", "b"]
        self.double()  # the step is compared as a difference of weights: float64 keeps it exact enough

    def kind(self, task: str) -> str:
        return "classification"

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](self.backbone(x))


def _head_a_update_while_visiting_b(weight: float) -> torch.Tensor:
    """How much task a's head moves during the visit of b (epoch 2), where only replay reaches it."""
    from medcoss_monai.apps.muscle.multitask_trainer import MultiTaskTrainer

    g = torch.Generator().manual_seed(1)
    batch = {t: {MultiTaskKeys.IMAGE: torch.randn(4, 4, generator=g, dtype=torch.float64), MultiTaskKeys.LABEL: torch.tensor([0, 1, 1, 0])} for t in "ab"}
    schedule = CyclicTaskSchedule({t: [batch[t]] for t in "ab"}, rounds=1, reshuffle=False)
    net = _TwoHeads()
    trainer = MultiTaskTrainer(
        "cpu", max_epochs=2, train_data_loader=[batch["a"]], network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), task_losses={t: torch.nn.CrossEntropyLoss() for t in "ab"},
        epoch_length=1, train_handlers=[schedule, TaskReplay({"a": [batch["a"]]}, schedule, weight=weight)],
    )
    before = {}
    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), lambda e: before.update(w=net.heads["a"].weight.detach().clone()))
    trainer.run()
    assert schedule.order == ["a", "b"]
    return net.heads["a"].weight.detach() - before["w"]


def test_replay_weight_scales_the_replayed_tasks_gradient():
    # while b is visited, a's head is trained by the replayed term alone: plain SGD moves it by
    # lr * weight * grad(loss of a's memory batch), so its step is proportional to the weight
    one, three = _head_a_update_while_visiting_b(1.0), _head_a_update_while_visiting_b(3.0)
    assert one.abs().sum() > 0, "the replayed loss reaches the backward pass"
    assert torch.allclose(three, 3 * one, rtol=1e-9, atol=0)
    assert torch.count_nonzero(_head_a_update_while_visiting_b(0.0)) == 0, "weight 0: nothing replayed"
