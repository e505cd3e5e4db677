"""Fine-tune a torchvision model on dogImages (train/ valid/ test/ ImageFolders) - a SageMaker script-mode script.

Written the way SageMaker users write them: argparse hyperparameters, data from SM_CHANNEL_TRAINING,
the model to SM_MODEL_DIR as a state_dict (model.pth), an smdebug hook from the job's
debughookconfig.json, and log lines that metric_definitions scrape, e.g.
    {"Name": "test_loss", "Regex": "Test set: Average loss: ([0-9.]+)"}
It runs unchanged with `sagemaker.pytorch.PyTorch(entry_point="train.py", ...)` and `localsage train
--entry-point train.py --source-dir examples/dog-breeds`. With torch_distributed (torchrun) it trains
data-parallel: one process per GPU (gloo on CPU).
"""
import argparse
import json
import logging
import os
import sys

import smdebug.pytorch as smd
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.optim as optim
import torchvision
from torchvision import datasets, transforms

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)
logger.addHandler(logging.StreamHandler(sys.stdout))


def net(arch, weights, num_classes):
    weights = None if weights.lower() == "none" else weights
    model = torchvision.models.get_model(arch, weights=weights)
    if weights is not None:
        for param in model.parameters():  # fine-tune the new head only
            param.requires_grad = False
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:  # classifier models (mobilenet, efficientnet, ...)
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def loaders(data_dir, batch_size, image_size, workers, distributed):
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    eval_tf = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(os.path.join(data_dir, "train"), transform=train_tf)
    sampler = torch.utils.data.distributed.DistributedSampler(train_set) if distributed else None
    train = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=sampler is None,
                                        sampler=sampler, num_workers=workers)
    evals = {}
    for split in ("valid", "test"):
        folder = os.path.join(data_dir, split)
        if os.path.isdir(folder):
            evals[split] = torch.utils.data.DataLoader(datasets.ImageFolder(folder, transform=eval_tf),
                                                       batch_size=batch_size, num_workers=workers)
    return train, sampler, evals, train_set.classes


def train_epoch(model, loader, criterion, optimizer, device, hook):
    model.train()
    hook.set_mode(smd.modes.TRAIN)
    total, count = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        total += loss.item() * inputs.size(0)
        count += inputs.size(0)
    return total / max(count, 1)


def test(model, loader, criterion, device, hook):
    model.eval()
    hook.set_mode(smd.modes.EVAL)
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            total += criterion(outputs, labels).item() * inputs.size(0)
            correct += (outputs.argmax(1) == labels).sum().item()
            count += inputs.size(0)
    return total / max(count, 1), correct / max(count, 1)


def main(args):
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    distributed = world_size > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    logger.info(f"rank {rank}/{world_size} on {device}, hyperparameters {vars(args)}")

    train_loader, sampler, evals, classes = loaders(args.data_dir, args.batch_size, args.image_size,
                                                    args.workers, distributed)
    model = net(args.arch, args.weights, len(classes)).to(device)
    criterion = nn.CrossEntropyLoss()
    hook = smd.Hook.create_from_json_file()
    hook.register_hook(model)
    hook.register_loss(criterion)
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=args.lr)

    for epoch in range(1, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loss = train_epoch(trained, train_loader, criterion, optimizer, device, hook)
        if rank == 0:
            print(f"Epoch {epoch}: Train set: Average loss: {train_loss:.4f}", flush=True)
            if "valid" in evals:
                loss, acc = test(model, evals["valid"], criterion, device, hook)
                print(f"Epoch {epoch}: Validation set: Average loss: {loss:.4f}, Accuracy: {acc:.4f}", flush=True)
    if rank == 0:
        if "test" in evals:
            loss, acc = test(model, evals["test"], criterion, device, hook)
            print(f"Test set: Average loss: {loss:.4f}, Accuracy: {acc:.4f}", flush=True)
        os.makedirs(args.model_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.model_dir, "model.pth"))
        with open(os.path.join(args.model_dir, "model_info.json"), "w") as f:
            json.dump({"arch": args.arch, "classes": classes, "image_size": args.image_size}, f)
        logger.info(f"model saved to {args.model_dir}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--arch", type=str, default="resnet50")
    parser.add_argument("--weights", type=str, default="DEFAULT", help="torchvision weights name, or none")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=str, default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--data-dir", type=str, default=os.environ.get("SM_CHANNEL_TRAINING", "data"))
    main(parser.parse_args())
