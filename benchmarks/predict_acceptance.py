"""Known acceptance and unseen rejection of `unseen.load(RUN).predict` at the default threshold.

Usage: python benchmarks/predict_acceptance.py RUN_DIR DATASET   (the run's dataset, full test set)
"""

import sys

import numpy as np

import unseen
from unseen.data import load_dataset

run, dataset = sys.argv[1], sys.argv[2]
p = unseen.load(run)
d = load_dataset(dataset)
held = [d.classes.index(c) for c in p.unseen_classes]
is_unseen = np.isin(d.y_test.numpy(), held)
pred = p.predict(d.x_test)
print(
    f"{dataset} held out {list(p.unseen_classes)}: score {p.score_name}, threshold {p.threshold:.4g}"
    f" ({p.threshold_source})"
)
print(
    f"known acceptance {np.mean(pred[~is_unseen] >= 0):.3f} ({(~is_unseen).sum()} images), "
    f"unseen rejection {np.mean(pred[is_unseen] < 0):.3f} ({is_unseen.sum()} images)"
)
