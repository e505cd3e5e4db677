"""Planted training faults and the debugger verdicts they get: the rule named for each fault must
fire, a healthy run must get no debugger-rule issue (profiler rules may speak about the machine).

Each fault is an in-process test model trained 2-3 epochs (overfitting: 20) on the demo set at
32 px through the product's debugger API (`debugger.attach`: the hook, the step timer, the system
sampler), then judged with `run_rules` (every rule; the job saves what rules=all needs, with
weights/gradients/activations every TENSOR_INTERVAL steps). Nothing is planted through product
hyperparameters: the fault is the model, its initialisation, the optimizer settings or the data.

    PYTHONPATH=src python bench/debugger_faults.py [--seeds 5] [--faults divergence,nan] [--json out.json]

prints one row per fault (the rule that must fire, its verdict and evidence, every rule that
fired, the one-line reading) and the false alarms of the healthy run over --seeds seeds.
tests/test_debugger_faults.py imports this module and asserts the same table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from localsage.container import debug_session  # noqa: E402 - after the sys.path insert
from localsage.core.contract import Contract  # noqa: E402 - after the sys.path insert
from localsage.debugger.rules.reading import ordered, reading  # noqa: E402 - after the sys.path insert
from localsage.debugger.rules.registry import DEBUGGER_RULES  # noqa: E402 - after the sys.path insert
from localsage.debugger.rules.verdicts import run_rules  # noqa: E402 - after the sys.path insert

SIZE = 32
TENSOR_INTERVAL = 4  # weights/biases/gradients/ReLU activations every 4 TRAIN steps (the default 500 is for long jobs)
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# ----------------------------------------------------------------------------- data
def load_split(folder: Path, size=SIZE):
    """An ImageFolder split as (images N x 3 x size x size, normalised; labels N) in memory."""
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted((folder / c).iterdir()):
            img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
            t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
            xs.append(t.permute(2, 0, 1).float().div(255))
            ys.append(ci)
    return (torch.stack(xs) - MEAN) / STD, torch.tensor(ys)


def load_demo(root: Path, size=SIZE):
    return {split: load_split(Path(root) / split, size) for split in ("train", "valid")}


def per_class(x, y, counts: dict, default=None):
    """The first counts[c] (or `default`) samples of each class."""
    keep = []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        keep.append(idx[: counts.get(c, default if default is not None else len(idx))])
    keep = torch.cat(keep)
    return x[keep], y[keep]


# ----------------------------------------------------------------------------- models
class Block(nn.Module):
    def __init__(self, cin, cout, norm=False):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()  # smdebug: <block>.relu_input_0
        self.bn = nn.BatchNorm2d(cout) if norm else nn.Identity()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class PlainNet(nn.Module):
    """conv-ReLU x3, without normalisation layers (so an initialisation fault is not normalised away)
    unless norm (BatchNorm, as in the ResNets: what keeps a too-high learning rate's losses finite)."""

    def __init__(self, classes, width=16, norm=False):
        super().__init__()
        w = width
        self.b1, self.b2, self.b3 = Block(3, w, norm), Block(w, 2 * w, norm), Block(2 * w, 4 * w, norm)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * w, classes)
        for m in self.modules():  # a standard initialisation: Kaiming for ReLU, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu" if isinstance(m, nn.Conv2d) else "linear")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.pool(self.b2(self.pool(self.b1(x))))
        return self.fc(self.b3(x).mean((2, 3)))


class DeepSigmoidNet(nn.Module):
    """A deep MLP of sigmoids with a tiny initialisation: the classic vanishing-gradient net."""

    def __init__(self, classes, depth=8, width=64, std=0.01):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(3 * SIZE * SIZE, width), nn.Sigmoid()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.Sigmoid()]
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def conv_weights(net):
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def zero_init(net):
    for m in conv_weights(net):
        nn.init.zeros_(m.weight)
    return net


def huge_init(net, scale=100.0):
    with torch.no_grad():
        for m in conv_weights(net):
            m.weight.mul_(scale)
    return net


def dead_bias(net, bias=-10.0):
    with torch.no_grad():
        for m in conv_weights(net):
            m.bias.fill_(bias)
    return net


# ----------------------------------------------------------------------------- faults
@dataclass
class Fault:
    name: str
    how: str
    must_fire: tuple  # every one of these must fire ...
    any_of: tuple = ()  # ... and at least one of these (when given)
    model: object = PlainNet
    opt: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    epochs: int = 3
    batch: int = 32
    data: object = None  # (x, y) -> (x, y) for the training set
    init: object = None  # net -> net
    kwargs: dict = field(default_factory=dict)
    reading: tuple = ()  # the reading must name one of these causes first


FAULTS = {f.name: f for f in (
    Fault("healthy", "PlainNet, Kaiming init, AdamW lr=3e-3, 3 epochs", ()),
    Fault("divergence-adamw", "AdamW lr=50, BatchNorm net (losses finite)", ("LossNotDecreasing", "LossDiverging"),
          lr=50.0, kwargs={"norm": True}, reading=("Diverged",)),
    Fault("divergence-sgd", "SGD lr=5, momentum 0.9, BatchNorm net (losses finite)",
          ("LossNotDecreasing", "LossDiverging"),
          opt="sgd", lr=5.0, kwargs={"norm": True}, reading=("Diverged",)),
    Fault("nan", "SGD lr=1e4 (NaN/inf)", ("ExplodingTensor",), opt="sgd", lr=1e4,
          reading=("Diverged", "NaN/inf")),
    Fault("no-learning", "AdamW lr=1e-7: loss flat at ln(6)", ("LossNotDecreasing",), lr=1e-7,
          reading=("Loss not decreasing",)),
    Fault("vanishing", "8 sigmoid layers, N(0, 0.01) init", ("VanishingGradient",), model=DeepSigmoidNet,
          reading=("Vanishing gradients", "Poor weight initialisation")),
    Fault("zero-init", "conv weights all zero", ("PoorWeightInitialization",), init=zero_init,
          reading=("All-zero tensors", "Poor weight initialisation")),
    Fault("huge-init", "conv weights x100", ("PoorWeightInitialization",), init=huge_init,
          reading=("Poor weight initialisation",)),
    Fault("dead-relu", "conv biases -10", ("DeadRelu",), init=dead_bias, reading=("Dead ReLUs",)),
    Fault("overfit", "8 images per class, no augmentation, 20 epochs, wider net", (), ("Overfit", "Overtraining"),
          epochs=20, batch=16, data=lambda x, y: per_class(x, y, {}, default=8), kwargs={"width": 32},
          reading=("Overfitting", "Overtraining")),
    Fault("imbalance", "class 0: 42 images, the others 4 each", ("ClassImbalance",),
          data=lambda x, y: per_class(x, y, {0: 1000}, default=4), reading=("Class imbalance",)),
    Fault("frozen", "AdamW lr=1e-12: weights barely move", ("WeightUpdateRatio",), lr=1e-12,
          reading=("Weight updates out of scale",)),
)}


def contract_for(root: Path) -> Contract:
    return Contract(root=root, output_dir=root / "output", output_data_dir=root / "output" / "data")


def train(fault: Fault, data, root: Path, seed=0, hp=None):
    """Train `fault`'s model in-process the way train.py does (debugger.attach, modes, step timer);
    returns the job's output folder."""
    torch.manual_seed(seed)
    x, y = data["train"]
    if fault.data is not None:
        x, y = fault.data(x, y)
    vx, vy = data["valid"]
    classes = int(data["train"][1].max()) + 1
    net = fault.model(classes, **fault.kwargs)
    if fault.init is not None:
        fault.init(net)
    crit, ecrit = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    hp = {"rules": "all", "debug-tensor-interval": TENSOR_INTERVAL, **(hp or {})}
    dbg = debug_session.attach(contract_for(root), hp, net, [crit, ecrit], workers=None, batch_size=fault.batch)
    if fault.opt == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=fault.lr, momentum=fault.momentum)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=fault.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    try:
        for _ in range(fault.epochs):
            dbg.mode("train")
            net.train()
            order = torch.randperm(len(y), generator=g)
            batches = [(x[i], y[i]) for i in order.split(fault.batch)]
            for xb, yb in dbg.timer.wrap(batches, "train"):
                loss = crit(net(xb), yb)
                dbg.timer.mark("forward")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                dbg.timer.mark("backward")
                opt.step()
                dbg.timer.mark("optimizer")
            dbg.mode("eval")
            net.eval()
            with torch.no_grad():
                for xb, yb in dbg.timer.wrap(list(zip(vx.split(64), vy.split(64))), "eval"):
                    ecrit(net(xb), yb)
    finally:
        dbg.close()
    return root / "output"


def judge(fault: Fault, verdicts) -> dict:
    by = {v["rule"]: v for v in verdicts}
    fired = [v["rule"] for v in ordered(verdicts) if v["triggered"]]
    fired_debugger = [r for r in fired if r in DEBUGGER_RULES]
    if fault.must_fire or fault.any_of:
        ok = all(by[r]["triggered"] for r in fault.must_fire) and (
            not fault.any_of or any(by[r]["triggered"] for r in fault.any_of))
    else:
        ok = not fired_debugger
    line = reading(verdicts)
    named = not fault.reading or any(line.startswith(r) for r in fault.reading)
    return {"fault": fault.name, "how": fault.how, "must_fire": list(fault.must_fire) + (
                [" or ".join(fault.any_of)] if fault.any_of else []),
            "ok": ok and named, "reading_names_cause": named, "fired": fired,
            "false_alarms": fired_debugger if not (fault.must_fire or fault.any_of) else [],
            "verdicts": {r: {"status": by[r]["status"], "evidence": by[r].get("evidence"),
                             "action": by[r].get("action")} for r in (*fault.must_fire, *fault.any_of)},
            "reading": line, "by_rule": by}


def run(fault_name, data, workdir: Path, seed=0) -> dict:
    fault = FAULTS[fault_name]
    t0 = time.perf_counter()
    out = train(fault, data, workdir / f"{fault_name}-{seed}", seed=seed)
    t1 = time.perf_counter()
    verdicts = run_rules(out)
    t2 = time.perf_counter()
    return {**judge(fault, verdicts), "seed": seed, "train_s": round(t1 - t0, 2), "rules_s": round(t2 - t1, 2)}


def table(results) -> str:
    lines = ["| fault | how | must fire | verdict (evidence) | fired (cause first) | reading |",
             "|---|---|---|---|---|---|"]
    for r in results:
        verdict = "; ".join(f"{k}: {v['status']} ({v['evidence']})" for k, v in r["verdicts"].items()) or (
            "no debugger-rule issue" if r["ok"] else "false alarms: " + ", ".join(r["false_alarms"]))
        lines.append(f"| {r['fault']}{'' if r['seed'] == 0 else ' seed ' + str(r['seed'])} | {r['how']} | "
                     f"{', '.join(r['must_fire']) or 'nothing'} | {'OK' if r['ok'] else 'FAIL'}: {verdict} | "
                     f"{', '.join(r['fired']) or '-'} | {r['reading']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="demo data folder (default: generate one: 6 classes x 60 images)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the healthy run")
    ap.add_argument("--faults", help="comma list (default all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models gain nothing from more)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-debugger-faults-"))
    root = Path(args.data) if args.data else None
    if root is None:
        from localsage.container.demo_images import make_demo_data

        root = make_demo_data(work / "demo", classes=6, per_class=60, size=96, seed=0)
    data = load_demo(root)
    names = args.faults.split(",") if args.faults else list(FAULTS)
    results = []
    for name in names:
        seeds = range(args.seeds) if name == "healthy" else [0]
        for seed in seeds:
            r = run(name, data, work, seed)
            results.append(r)
            print(f"{name} seed {seed}: {'OK' if r['ok'] else 'FAIL'} fired={r['fired']} "
                  f"train {r['train_s']} s, rules {r['rules_s']} s", flush=True)
    print()
    print(table(results))
    healthy = [r for r in results if r["fault"] == "healthy"]
    if healthy:
        alarms = sum(len(r["false_alarms"]) for r in healthy)
        print(f"\nhealthy runs: {len(healthy)} seeds, {alarms} debugger-rule false alarms "
              f"({', '.join(a for r in healthy for a in r['false_alarms']) or 'none'})")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "by_rule"} for r in results],
                                              indent=2, default=str))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
