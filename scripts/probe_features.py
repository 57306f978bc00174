"""Linear probes of a backbone's features: how well do they describe classes it was not trained on?

A run's frozen backbone (model=backbone) and a randomly initialized one of the same architecture each give the
global-average-pooled output of some of their layers, for a few images per class of Fashion-MNIST's classes 5-9;
a least-squares linear classifier on those features is tested on all 5,000 test images of 5-9. A transferred head
on a frozen base (experiment=fashion_transfer_5_9) can do little better than its base's probe at the last layer.

    python scripts/probe_features.py --data ../shared/data/fashion-mnist --run /tmp/transfer/PRETRAIN_ID
    python scripts/probe_features.py ... --layers block_2_add,block_9_add,out_relu --per-class 20,500

Prints a Markdown table: a row per layer and base, a column per number of images per class.
"""

import argparse
from pathlib import Path

import keras
import numpy as np
import yaml

from dltrain.config import from_mapping
from dltrain.data import fashion_mnist
from dltrain.models.backbone import build_backbone

NEW_CLASSES = [5, 6, 7, 8, 9]
RIDGE = 1.0  # the least-squares penalty on the standardized features


def _features(model: keras.Model, layers: list[str], images: np.ndarray) -> list[np.ndarray]:
    """The pooled outputs of the backbone's `layers` for uint8 `images`, through the model's own preprocessing."""
    base = model.get_layer("backbone")
    pooled = [keras.layers.GlobalAveragePooling2D()(base.get_layer(name).output) for name in layers]
    extractor = keras.Model(base.input, pooled)
    # Resizing, RGB and the base's scaling, as in training: what the model feeds its base.
    before_base = keras.Model(model.input, model.get_layer("preprocessing").output)
    outputs = extractor.predict(before_base.predict(images / np.float32(255), batch_size=500, verbose=0), verbose=0)
    return outputs if isinstance(outputs, list) else [outputs]


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of a ridge least-squares classifier of one-hot labels on standardized features."""
    mean, scale = train.mean(axis=0), train.std(axis=0) + 1e-6
    design = np.hstack([(train - mean) / scale, np.ones((len(train), 1))])
    targets = np.eye(train_labels.max() + 1)[train_labels]
    weights = np.linalg.solve(design.T @ design + RIDGE * np.eye(design.shape[1]), design.T @ targets)
    scores = np.hstack([(test - mean) / scale, np.ones((len(test), 1))]) @ weights
    return float((scores.argmax(axis=1) == test_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the Fashion-MNIST folder")
    parser.add_argument("--run", required=True, help="a model=backbone run's folder (its model/model.keras is read)")
    parser.add_argument("--layers", default="block_2_add,block_9_add,block_15_add,out_relu",
                        help="comma-separated layers of the base (MobileNetV2's by default)")  # fmt: skip
    parser.add_argument("--per-class", default="20,100,500", help="comma-separated images per class to fit on")
    args = parser.parse_args()
    layers, budgets = args.layers.split(","), [int(count) for count in args.per_class.split(",")]

    (images, labels), (test_images, test_labels) = fashion_mnist.load(Path(args.data))
    train = fashion_mnist.select(images, labels, NEW_CLASSES, max(budgets))
    test = fashion_mnist.select(test_images, test_labels, NEW_CLASSES)
    pretrained = keras.saving.load_model(Path(args.run) / "model" / "model.keras", compile=False)
    backbone = from_mapping(yaml.safe_load((Path(args.run) / "config.yaml").read_text())).model.hyperparameters
    keras.utils.set_random_seed(0)
    random = build_backbone(  # the same architecture, randomly initialized
        pretrained.input_shape[1:], len(NEW_CLASSES), backbone["name"], input_size=backbone["input_size"]
    )  # fmt: skip

    print(f"| layer | base | {' | '.join(f'{count} per class' for count in budgets)} |")
    print(f"|---|---|{'---|' * len(budgets)}")
    for base_name, model in (("pretrained", pretrained), ("random", random)):
        for layer, train_features, test_features in zip(
            layers, _features(model, layers, train.images), _features(model, layers, test.images), strict=True
        ):
            accuracies = []
            for count in budgets:
                chosen = np.concatenate(
                    [np.flatnonzero(train.labels == label)[:count] for label in range(len(NEW_CLASSES))]
                )
                accuracies.append(
                    probe_accuracy(train_features[chosen], train.labels[chosen], test_features, test.labels)
                )
            print(f"| {layer} | {base_name} | {' | '.join(f'{accuracy:.3f}' for accuracy in accuracies)} |", flush=True)


if __name__ == "__main__":
    main()
