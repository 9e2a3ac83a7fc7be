"""How well does a toy checkpoint's vision tower encode shape? A linear probe per layer.

    python scripts/probe_toy_vision.py --checkpoint vlmnb/toy/checkpoint [--n 400]

For every object of ``--n`` training-split scenes, the tower's features are averaged over the
object's patches (weighted by how many of the patch's pixels the object covers), at every layer
of the tower and after the projector. A multinomial logistic regression (torch, L-BFGS) is fit
on 70% of the objects and scored on the other 30%: the accuracy of reading the object's shape
(3 classes; chance about 0.33).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def features(checkpoint: str, n: int):
    from transformers import LlavaForConditionalGeneration

    from vlmnb.toy.model import PATCH_SIZE, pixel_values
    from vlmnb.toy.scenes import IMAGE_SIZE, SHAPES, make_scene

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    grid = IMAGE_SIZE // PATCH_SIZE
    per_layer, labels = [], []
    for i in range(n):
        scene = make_scene(i, split="train")
        with torch.no_grad():
            out = model.model.vision_tower(pixel_values([scene.image]), output_hidden_states=True)
            layers = [h[0, 1:] for h in out.hidden_states]
            layers.append(model.model.multi_modal_projector(out.hidden_states[-1][:, 1:])[0])
        for obj, mask in zip(scene.objects, scene.masks):
            weights = mask.reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).sum(axis=(1, 3)).reshape(-1)
            w = torch.tensor(weights / weights.sum(), dtype=torch.float32)[:, None]
            per_layer.append([(w * f).sum(0) for f in layers])
            labels.append(SHAPES.index(obj.shape))
    names = [f"tower layer {k}" for k in range(len(layers) - 1)] + ["after projector"]
    return names, [torch.stack([row[k] for row in per_layer]) for k in range(len(names))], torch.tensor(labels)


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, train_share: float = 0.7) -> float:
    cut = int(len(y) * train_share)
    mean, std = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:cut] @ w + b, y[:cut]) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x[cut:] @ w + b).argmax(1) == y[cut:]).float().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="save_pretrained folder (default: the shipped toy)")
    parser.add_argument("--n", type=int, default=400, help="training-split scenes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from vlmnb.toy import checkpoint_path

    names, xs, y = features(args.checkpoint or str(checkpoint_path()), args.n)
    print(f"{len(y)} objects; chance about {np.bincount(y.numpy()).max() / len(y):.2f}")
    for name, x in zip(names, xs):
        print(f"{name:16s} shape probe accuracy {probe_accuracy(x, y):.3f}")


if __name__ == "__main__":
    main()
