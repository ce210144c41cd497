"""Feature-space and post-hoc detectors, all from the one forward pass of a run.

Every score here follows the convention of :mod:`unseen.scores`: **higher = more likely a
known class**. Distances are therefore negated. Each detector learns only from known-class
data: the known training images without augmentation (``FitContext.train``, computed when a
score sets ``needs_train``) or the validation slice (``FitContext.val``); never from test or
unseen images. Fitted state lives in attributes ending in ``_`` (saved to ``detectors.pt``);
``fit_summary()`` gives the JSON-friendly part (written to ``metrics.json`` under
``scores.<name>.fit``).

==============  ================  =========================================================
score           fits on           score (higher = known)
==============  ================  =========================================================
mahalanobis     train features    ``-min_k (x-mu_k)^T S^+ (x-mu_k)``, S shared covariance
rmd             train features    ``-min_k [MD_k(x) - MD_0(x)]``, MD_0: one background Gaussian
knn             train features    ``-|| z - z_(k) ||``, z = x/||x||, z_(k) k-th nearest bank entry
vim             train feats+head  ``logsumexp(logits) - alpha ||P_res (x - u)||``
react           train features    ``logsumexp(W min(x, c) + b)``, c the p-th percentile
ash             (the head)        ``logsumexp(W a(x) + b)``, a: per-image prune and rescale
scale           (the head)        ``logsumexp(W x exp(s1/s2) + b)``, no pruning
dice            train feats+head  ``logsumexp((W * M) x + b)``, M drops small contributions
temperature     validation        ``max softmax(logits / T)``, T minimises validation NLL
gen             (nothing)         ``-sum p^g (1-p)^g`` over the top-M softmax probabilities
openmax         train logits      ``1 - P(unknown)`` after Weibull recalibration
odin            (nothing)         ``max softmax(f(x~) / T)``, x~ = x - eps sign(grad)
==============  ================  =========================================================
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .console import image_bar
from .errors import ConfigError, InputError
from .hardware import autocast
from .models import model_input
from .scores import FitContext, Outputs, Score, check_setting, expand_score_names, register

if sys.version_info >= (3, 11):
    from typing import Self
else:  # typing_extensions comes with torch
    from typing_extensions import Self

# ----------------------------------------------------------------------------- helpers


def _train(score: Score, context: FitContext, labelled: bool = True) -> Outputs:
    """The known training outputs (with labels when ``labelled``), or a clear error."""
    train = context.train
    if train is None:
        raise InputError(
            f"score '{score.name}' needs the known training outputs (FitContext.train)"
        )
    if labelled and train.labels is None:
        raise InputError(
            f"score '{score.name}' needs the labels of the known training images "
            "(FitContext.train.labels)"
        )
    if train.features is None and score.uses_features:
        raise InputError(
            f"score '{score.name}' needs the features of the training images "
            "(FitContext.train.features), not their logits alone"
        )
    if len(train) == 0:
        raise InputError(f"score '{score.name}' has no known training images to fit on.")
    labels = train.labels  # checked whenever given: an unseen row (-1) must not shape any fit
    # (only a score that reads them needs them to be the head's classes: the members of an
    # ovr-separate head have one output each but see the labels of all K classes)
    if labels is not None and (
        int(labels.min()) < 0 or (labelled and int(labels.max()) >= context.num_classes)
    ):
        raise InputError(
            f"score '{score.name}' fits on known classes only: training labels must be 0 to "
            f"{context.num_classes - 1}"
        )
    return train


def _head(score: Score, context: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight (K x D) and bias (K), or a clear error."""
    if context.head_weight is None or context.head_bias is None:
        raise InputError(
            f"score '{score.name}' needs the head's weight and bias "
            "(FitContext.head_weight, FitContext.head_bias)"
        )
    return context.head_weight, context.head_bias


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class means ``K x D`` of ``features``; every class must have at least one row."""
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0, 0])
        raise InputError(
            f"known class {missing} has no training images, so its class mean cannot be fitted; "
            "use a larger --train-subset."
        )
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return sums / counts[:, None]


def squared_mahalanobis(x: torch.Tensor, means: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """``N x K`` squared Mahalanobis distances ``(x - mu_k)^T P (x - mu_k)`` with ``P = L L^T``.

    Computed in float64 as squared Euclidean distances between whitened points.
    """
    z = x.double() @ whiten
    m = means.double() @ whiten
    d = (z * z).sum(1, keepdim=True) - 2 * z @ m.T + (m * m).sum(1)[None, :]
    return d.clamp_min(0)


def covariance_inverse(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(precision, whitening, rank)`` of a symmetric covariance, from one eigendecomposition.

    The precision is the pseudo-inverse (eigenvalues below ``D * eps * max eigenvalue`` count
    as zero, as in ``pinv``/``pinvh``), ``whitening`` the ``D x rank`` matrix ``L`` with
    ``L L^T = precision``. A score restored from ``detectors.pt`` rebuilds ``L`` from the
    saved covariance with this same function: the distances, and so the threshold's image,
    come out as fitted, to the last bit.
    """
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > evals.abs().max() * cov.shape[0] * torch.finfo(cov.dtype).eps
    inv = torch.where(keep, 1 / evals, torch.zeros_like(evals))
    precision = (evecs * inv) @ evecs.T
    return precision, evecs[:, keep] * inv[keep].sqrt(), int(keep.sum())


def gaussian_fit(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Maximum-likelihood covariance of already centred rows, with its
    :func:`covariance_inverse`: ``(covariance, precision, whitening, rank)``."""
    cov = centred.T @ centred / centred.shape[0]
    cov = (cov + cov.T) / 2
    return (cov, *covariance_inverse(cov))


# ----------------------------------------------------------------------------- Mahalanobis


@register
class Mahalanobis(Score):
    """Lee et al. (2018), penultimate layer only and without input preprocessing.

    Class means ``mu_k`` and one covariance shared by all classes (the maximum-likelihood
    covariance of the training features centred on their own class means, as scikit-learn's
    ``EmpiricalCovariance`` on the pooled centred features). The precision is the
    pseudo-inverse, so dead (constant) feature dimensions do no harm. Score: minus the
    smallest squared Mahalanobis distance to a class mean.
    """

    name = "mahalanobis"
    uses_features = True
    reads_logits = False
    description = "minus the smallest Mahalanobis distance to a class mean (shared covariance; train features)"
    needs_train = True

    def fit(self, context: FitContext) -> Self:
        train = _train(self, context)
        x = train.features.double()
        # mahalanobis and rmd fit the same Gaussians: the first fits them, for these outputs
        # (a context whose train outputs were replaced fits again)
        cached = context.shared.get("class_gaussians")
        if cached is None or cached[0] is not train:
            means = class_means(x, train.labels, context.num_classes)
            cached = train, (means, *gaussian_fit(x - means[train.labels]))
            context.shared["class_gaussians"] = cached
        self.means_, self.covariance_, self.precision_, self._whiten, self.covariance_rank_ = (
            cached[1]
        )
        self.feature_dim_ = int(x.shape[1])
        self.fit_on_ = "train"
        return self

    def class_distances(self, features: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_whiten", None) is None:  # restored from detectors.pt
            self._whiten = covariance_inverse(self.covariance_)[1]
        dev = features.device
        return squared_mahalanobis(features, self.means_.to(dev), self._whiten.to(dev))

    def score(self, outputs: Outputs) -> torch.Tensor:
        return -self.class_distances(outputs.features).amin(dim=1)


@register
class RelativeMahalanobis(Mahalanobis):
    """Ren et al. (2021): class distance minus the distance to one background Gaussian.

    ``MD_k`` as in :class:`Mahalanobis`; ``MD_0`` uses the mean and maximum-likelihood
    covariance of all training features together. Score ``-min_k (MD_k(x) - MD_0(x))``.
    """

    name = "rmd"
    description = "relative Mahalanobis: minus min_k (MD_k - MD_background) (train features)"

    def fit(self, context: FitContext) -> Self:
        super().fit(context)
        if len(self.means_) < 2:  # (a run always has two or more known classes)
            raise InputError(
                "score 'rmd' needs at least two known classes: with one, the background "
                "Gaussian is the class's own and every image scores 0; use 'mahalanobis'."
            )
        x = _train(self, context).features.double()
        self.background_mean_ = x.mean(0)
        (
            self.background_covariance_,
            self.background_precision_,
            self._bg_whiten,
            self.background_rank_,
        ) = gaussian_fit(x - self.background_mean_)
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        if getattr(self, "_bg_whiten", None) is None:  # restored from detectors.pt
            self._bg_whiten = covariance_inverse(self.background_covariance_)[1]
        dev = outputs.features.device
        d0 = squared_mahalanobis(
            outputs.features, self.background_mean_.to(dev)[None], self._bg_whiten.to(dev)
        )[:, 0]
        return -(self.class_distances(outputs.features).amin(dim=1) - d0)


# ----------------------------------------------------------------------------- KNN


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def kth_neighbour_distance(
    queries: torch.Tensor, bank: torch.Tensor, k: int, max_elements: int = 2**25
) -> torch.Tensor:
    """Euclidean distance from each query to its ``k``-th nearest bank row.

    Brute force in float32, in chunks of queries bounded to ``max_elements`` entries:
    ``2 q.b - ||b||^2`` for every bank row (one matrix product), its ``k``-th largest value
    ``m`` per query, then ``||q - b|| = sqrt(||q||^2 - m)``. Exact for any norms, so an
    all-zero feature (left at zero by L2 normalisation) is at distance 1 from unit-norm rows,
    as in faiss; like faiss, up to float32 cancellation, which blurs distances between unit
    vectors below about 1e-3 (near-duplicate features of a collapsed network).
    """
    if len(queries) == 0:
        return torch.empty(0, device=queries.device)
    bank = bank.to(queries.device, torch.float32)
    bank_sq = (bank * bank).sum(1)
    q = queries.float()
    rows = max(1, max_elements // max(1, len(bank)))
    out = []
    for start in range(0, len(q), rows):
        chunk = q[start : start + rows]
        closeness = 2 * (chunk @ bank.T) - bank_sq
        kth = closeness.topk(k, dim=1, sorted=False).values.amin(dim=1)
        out.append(((chunk * chunk).sum(1) - kth).clamp_min(0).sqrt())
    return torch.cat(out)


@register
class KNN(Score):
    """Sun et al. (2022): distance to the k-th nearest L2-normalised training feature.

    The bank is every known training feature, or a seeded random subset of ``bank_size`` of
    them (``--knn-bank``; the speed default). ``k`` is clipped to the bank size. faiss
    (``IndexFlatL2``, exact) is used on CPU when it is installed, torch otherwise.
    """

    name = "knn"
    options = ("knn_k", "knn_bank")
    uses_features = True
    reads_logits = False
    description = (
        "minus the distance to the k-th nearest normalised training feature (Sun et al. 2022)"
    )
    needs_train = True

    def __init__(self, k: int = 50, bank_size: int | None = 10000, seed: int = 0):
        k = check_setting(self, "k", k, "knn_k")
        bank_size = check_setting(self, "bank_size", bank_size, "knn_bank")
        self.k = k
        self.bank_size = bank_size
        self.seed = check_setting(self, "seed", seed, "seed")  # the memory bank's draw

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(k=config.knn_k, bank_size=config.knn_bank, seed=config.seed)

    def fit(self, context: FitContext) -> Self:
        x = _train(self, context, labelled=False).features.float()
        n_total = len(x)
        if self.bank_size is not None and n_total > self.bank_size:
            g = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(n_total, generator=g)[: self.bank_size].sort().values
            x = x[keep.to(x.device)]
        self.bank_ = F.normalize(x, dim=1)
        self.k_ = int(min(self.k, len(self.bank_)))
        self.bank_size_ = int(len(self.bank_))
        self.train_size_ = int(n_total)
        self.fit_on_ = "train"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        q = F.normalize(outputs.features.float(), dim=1)
        faiss = _faiss()
        if faiss is not None and q.device.type == "cpu" and len(q):
            index = faiss.IndexFlatL2(self.bank_.shape[1])
            index.add(np.ascontiguousarray(self.bank_.cpu().numpy(), dtype=np.float32))
            d2, _ = index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), self.k_)
            return -torch.from_numpy(d2[:, -1]).clamp_min(0).sqrt()
        return -kth_neighbour_distance(q, self.bank_, self.k_)


def knn_k_note(config: Any, train_labels: np.ndarray, exclude: Sequence[int] = ()) -> str | None:
    """A note when a run's scores (``config``: a :class:`~unseen.config.RunConfig`) take knn
    with ``--knn-k`` above the bank's expected share of the smallest known class's training
    images: the k-th neighbour of an image of that class then lies in another class, so its
    known images look as far from the bank as unseen ones (on digits, k=200 with about 100
    images per class gave AUROC 0.035, k=50 gave 0.965). The classes of ``exclude`` (labels:
    ``--rare`` classes, small on purpose) are left out of "smallest"."""
    if "knn" not in expand_score_names(config.scores):
        return None
    k, bank_size = config.knn_k, config.knn_bank
    labels = np.asarray(train_labels, dtype=np.int64)
    counts = np.bincount(labels)
    share = 1.0 if bank_size is None else min(1.0, bank_size / max(int(counts.sum()), 1))
    counts[[c for c in exclude if c < len(counts)]] = 0
    counts = counts[counts > 0]
    if not len(counts):
        return None
    smallest = int(counts.min() * share)
    if k <= smallest:
        return None
    return (
        f"note: --knn-k {k} is above the {smallest} training images the knn bank holds of the "
        "smallest known class: their k-th neighbour lies in another class, which makes known "
        f"images look unseen; lower --knn-k (Sun et al. scale it with the bank: 50 for 50,000)"
    )


# ----------------------------------------------------------------------------- ViM


def check_vim_dim(dim: int, feature_dim: int) -> None:
    """ViM's principal subspace must leave a residual: ``0 < dim < feature_dim``."""
    if not 0 < dim < feature_dim:
        raise ConfigError(
            f"--vim-dim {dim} must be below the feature dimension {feature_dim} of this model."
        )


def auto_vim_dim(feature_dim: int, rank: int | None = None) -> int:
    """Principal-subspace size when ``--vim-dim`` is auto: half the features, at most 1000 --
    and at most half the ``rank`` of the centred training features when they span fewer
    directions (fewer training images than features, or dead units)."""
    return max(1, min(1000, feature_dim // 2, feature_dim if rank is None else rank // 2))


@register
class ViM(Score):
    """Wang et al. (2022), Virtual-logit Matching.

    Origin ``u = -pinv(W) b`` (the point the head maps to zero logits); the principal
    subspace is spanned by the ``D`` leading eigenvectors of ``(x - u)^T (x - u) / N`` on the
    training features; the residual is the projection on the other ``F - D`` eigenvectors
    (``F`` features).
    ``alpha = mean_train(max logit) / mean_train(||x_res||)``. Score = energy minus the
    virtual logit: ``logsumexp(logits) - alpha ||x_res||``. ``D`` defaults to
    :func:`auto_vim_dim` (the paper uses 512 for 768 features and 1000 for 2048).
    """

    name = "vim"
    options = ("vim_dim",)
    uses_features = True
    description = (
        "virtual-logit matching: energy minus alpha * residual norm outside the principal subspace"
    )
    needs_train = True

    def __init__(self, dim: int | None = None):
        dim = check_setting(self, "dim", dim, "vim_dim")
        self.dim = dim

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(dim=config.vim_dim)

    def fit(self, context: FitContext) -> Self:
        train = _train(self, context, labelled=False)
        w, b = (t.double() for t in _head(self, context))
        x = train.features.double().to(w.device)
        n_feat = x.shape[1]
        if self.dim is not None:
            check_vim_dim(self.dim, n_feat)
        self.origin_ = -(torch.linalg.pinv(w) @ b)
        centred = x - self.origin_
        evals, evecs = torch.linalg.eigh(centred.T @ centred / len(x))  # ascending
        # the directions the training features span (matrix_rank's default tolerance): a
        # principal subspace of them all would leave the training images no residual, and
        # alpha (divided by its mean) would blow up to ~1e12 and drown the energy term
        tol = evals[-1].clamp_min(0) * n_feat * torch.finfo(evals.dtype).eps
        self.rank_ = int((evals > tol).sum())
        dim = auto_vim_dim(n_feat, self.rank_) if self.dim is None else self.dim
        dim = max(1, min(dim, self.rank_ - 1))
        self.requested_dim_ = self.dim  # None (auto), or --vim-dim, which the rank may lower
        self.residual_basis_ = evecs[:, : n_feat - dim].contiguous()
        train_logits = train.logits.double().to(w.device)
        residual = (centred @ self.residual_basis_).norm(dim=1)
        self.alpha_ = float(train_logits.amax(1).mean() / residual.mean().clamp_min(1e-12))
        self.dim_ = int(dim)
        self.explained_variance_ = float(
            evals[n_feat - dim :].sum() / evals.sum().clamp_min(1e-300)
        )
        self.fit_on_ = "train"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        dev = outputs.features.device
        x = outputs.features.double() - self.origin_.to(dev)
        virtual = self.alpha_ * (x @ self.residual_basis_.to(dev)).norm(dim=1)
        return torch.logsumexp(outputs.logits.double(), dim=1) - virtual


# ----------------------------------------------------------------------------- ReAct


def percentile(x: torch.Tensor, q: float) -> float:
    """The ``q``-th percentile of all entries of ``x`` with linear interpolation, as
    ``numpy.percentile``; sorted on the GPU when ``x`` is there, else with NumPy."""
    flat = x.detach().float().flatten()
    if flat.device.type == "cpu":
        return float(np.percentile(flat.numpy(), q))
    return sorted_percentile(flat.sort().values, q)


def sorted_percentile(v: torch.Tensor, q: float) -> float:
    """``numpy.percentile``'s linear interpolation on an already sorted 1-d tensor (only the
    two entries it reads are converted: the tensor may hold hundreds of millions)."""
    pos = q / 100 * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    a, b = float(v[lo]), float(v[hi])
    return a + (pos - lo) * (b - a)


@register
class ReAct(Score):
    """Sun, Guo and Li (2021): clip features at ``c``, then the energy of the head's logits.

    ``c`` is the ``percentile``-th percentile (linear interpolation, as ``numpy.percentile``)
    of all training activations (every entry of the ``N x D`` feature matrix).
    """

    name = "react"
    options = ("react_percentile",)
    uses_features = True
    reads_logits = False
    description = "energy of the head applied to features clipped at a training percentile"
    needs_train = True

    def __init__(self, percentile: float = 90.0):
        percentile = check_setting(self, "percentile", percentile, "react_percentile")
        self.percentile = percentile

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(percentile=config.react_percentile)

    def fit(self, context: FitContext) -> Self:
        weight, bias = _head(self, context)
        self.clip_ = percentile(_train(self, context, labelled=False).features, self.percentile)
        self.percentile_ = float(self.percentile)
        self.head_weight_ = weight.float()
        self.head_bias_ = bias.float()
        self.fit_on_ = "train"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        dev = outputs.features.device
        clipped = outputs.features.float().clamp(max=self.clip_)
        logits = clipped @ self.head_weight_.to(dev).T + self.head_bias_.to(dev)
        return torch.logsumexp(logits, dim=1)


# ----------------------------------------------------------------------------- ASH, SCALE, DICE


def head_energy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``logsumexp(features W^T + b)`` in float64: the energy of a head applied to features."""
    dev = features.device
    logits = features.double() @ weight.to(dev, torch.float64).T + bias.to(dev, torch.float64)
    return torch.logsumexp(logits, dim=1)


def kept_count(width: int, percentile: float) -> int:
    """Activations per image that a ``percentile`` prune keeps: ``width - round(width p / 100)``
    (round half to even, as the reference code's ``np.round``), at least one."""
    return max(1, width - int(np.round(width * percentile / 100.0)))


def _non_negative(score: Score, features: torch.Tensor, what: str) -> None:
    """Activation shaping is defined on post-ReLU activations: refuse negative ones."""
    if len(features) and float(features.min()) < 0:
        raise InputError(
            f"score '{score.name}' shapes post-ReLU activations, but {what} has negative values "
            f"(the smallest is {float(features.min()):.4g})"
        )


#: the largest ``s1 / s2`` whose exponential float64 holds (about 709.8)
MAX_LOG_SCALE = math.log(torch.finfo(torch.float64).max)


def _sum_ratio(x: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``s1 / s2`` per row: the sum of all activations over the sum of the ``top`` ones kept
    (0 for an all-zero row, which stays zero whatever it is multiplied by). It is at most
    ``n / k``; one whose exponential overflows float64 is refused."""
    s1, s2 = x.sum(1), top.sum(1)
    ratio = torch.where(s2 > 0, s1 / s2.clamp_min(torch.finfo(s2.dtype).tiny), 0.0)
    if len(ratio) and float(ratio.max()) > MAX_LOG_SCALE:
        raise InputError(
            f"activation shaping would multiply by exp({float(ratio.max()):.0f}), beyond "
            "float64: keep more activations per image (a lower percentile)"
        )
    return ratio


def _per_member(
    shape: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, members: int
) -> torch.Tensor:
    """``shape`` applied to each member network's own block of features: ``x`` is N x (M*D),
    member m's features columns ``m*D:(m+1)*D`` (as ``ovr-separate`` stacks them). The
    width was checked to divide at fit (``_keep_head``) and against the outputs at score."""
    if members == 1:
        return shape(x)
    n, width = x.shape
    return shape(x.reshape(n * members, width // members)).reshape(n, width)


def members_of(context: FitContext) -> int:
    """Member networks whose features sit side by side: K for ``ovr-separate`` (whose head is
    block-diagonal), else 1 (one network, one head)."""
    from .heads import HEADS

    head = HEADS.get(context.head)
    return context.num_classes if head is not None and head.separate else 1


def ash(features: torch.Tensor, percentile: float = 90.0, variant: str = "s") -> torch.Tensor:
    """Activation shaping (Djurisic et al. 2023), per image (per row), in float64.

    Keep each image's :func:`kept_count` largest activations and zero the rest; then ``p``
    leaves the kept values as they are, ``b`` sets each to ``s1 / k`` (the sum of all
    ``s1`` spread evenly over the ``k`` kept), ``s`` multiplies them by ``exp(s1 / s2)``
    (``s2`` the sum of the kept values). Ties at the cut go to the lower feature index.
    """
    x = features.double()
    keep = kept_count(x.shape[1], percentile)
    # a stable sort, not topk: ties (zeros, with fewer than k active units) are broken the same
    # way on every device, by the lower index (it matters to b, which fills the kept entries)
    values, index = (t[:, :keep] for t in x.sort(dim=1, descending=True, stable=True))
    if variant == "b":
        values = (x.sum(1) / values.shape[1])[:, None].expand_as(values)
    elif variant == "s":
        values = values * _sum_ratio(x, values).exp()[:, None]
    elif variant != "p":
        raise ConfigError(f"ash variant {variant!r} is not known; choose one of: s, b, p.")
    return torch.zeros_like(x).scatter_(1, index, values)


def scale(features: torch.Tensor, percentile: float = 85.0) -> torch.Tensor:
    """SCALE (Xu et al. 2024): every activation times ``exp(s1 / s2)``, with ``s1`` the sum of
    all of the image's activations and ``s2`` the sum of its :func:`kept_count` largest; no
    pruning. In float64."""
    x = features.double()
    top = x.topk(kept_count(x.shape[1], percentile), dim=1).values
    return x * _sum_ratio(x, top).exp()[:, None]


class _HeadEnergy(Score):
    """A score that is the energy of the head applied to transformed features; fit keeps a
    copy of the head and the number of member networks (K on ``ovr-separate``, else 1)."""

    uses_features = True
    reads_logits = False

    def _keep_head(self, context: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = _head(self, context)
        self.head_weight_ = weight.float()
        self.head_bias_ = bias.float()
        self.feature_dim_ = int(weight.shape[1])  # what score() checks
        self.members_ = members_of(context)  # 1, or the head's K rows (one per member)
        if self.feature_dim_ % self.members_:
            raise InputError(
                f"score '{self.name}': a {tuple(weight.shape)} head cannot be split among "
                f"{self.members_} member networks"
            )
        return weight, bias


class _Shaping(_HeadEnergy):
    """Activation shaping: the energy of the head on features reshaped image by image (and
    member network by member network, on ``ovr-separate``). Nothing is learned from data;
    the features must be non-negative (post-ReLU), as those of every model here are."""

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, context: FitContext) -> Self:
        self._keep_head(context)
        if context.train is not None and context.train.features is not None:
            _non_negative(self, context.train.features, "FitContext.train.features")
        self.fit_on_ = "nothing (fixed settings; the head)"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        _non_negative(self, outputs.features, "Outputs.features")
        shaped = _per_member(self.shape, outputs.features, getattr(self, "members_", 1))
        return head_energy(shaped, self.head_weight_, self.head_bias_)


@register
class ASH(_Shaping):
    """Djurisic et al. (2023), Activation SHaping: the energy of the head applied to each
    image's features pruned to their largest ``100 - p`` percent and shaped (see :func:`ash`):
    ``--ash-percentile`` is the paper's ``p``, ``--ash-variant`` ``s`` (scale, the
    authors' choice), ``b`` (binarise) or ``p`` (prune only).
    """

    name = "ash"
    options = ("ash_percentile", "ash_variant")
    description = (
        "energy of the head on features pruned to each image's top (100-p)% "
        "(variant s rescales them, b binarises)"
    )

    def __init__(self, percentile: float = 90.0, variant: str = "s"):
        self.percentile = check_setting(self, "percentile", percentile, "ash_percentile")
        self.variant = check_setting(self, "variant", variant, "ash_variant")

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(percentile=config.ash_percentile, variant=config.ash_variant)

    def fit(self, context: FitContext) -> Self:
        super().fit(context)
        self.percentile_ = float(self.percentile)
        self.variant_ = str(self.variant)
        return self

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        return ash(features, self.percentile_, self.variant_)


@register
class Scale(_Shaping):
    """Xu et al. (2024), SCALE: the energy of the head applied to each image's features
    multiplied by ``exp(s1 / s2)`` (see :func:`scale`); nothing is pruned."""

    name = "scale"
    options = ("scale_percentile",)
    description = "energy of the head on features scaled by exp(sum of all / sum of top (100-p)%)"

    def __init__(self, percentile: float = 85.0):
        self.percentile = check_setting(self, "percentile", percentile, "scale_percentile")

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(percentile=config.scale_percentile)

    def fit(self, context: FitContext) -> Self:
        super().fit(context)
        self.percentile_ = float(self.percentile)
        return self

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        return scale(features, self.percentile_)


@register
class DICE(_HeadEnergy):
    """Sun and Li (2022), DIrected Sparsification: the energy of a sparsified head.

    The contribution of feature ``j`` to class ``k`` is ``m_j W_kj``, with ``m`` the mean
    training feature; the weights whose contribution is at or below the ``p``-th percentile
    of all ``K x D`` contributions (linear interpolation, as ``numpy.percentile``) are set to
    zero, the bias is kept. Score: ``logsumexp((W * M) x + b)``. On ``ovr-separate`` each
    member network's head is sparsified on its own (its block of the block-diagonal head).
    """

    name = "dice"
    options = ("dice_sparsity",)
    description = "energy of the head with its weights of smallest mean contribution set to zero"
    needs_train = True

    def __init__(self, sparsity: float = 90.0):
        self.sparsity = check_setting(self, "sparsity", sparsity, "dice_sparsity")

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(sparsity=config.dice_sparsity)

    def fit(self, context: FitContext) -> Self:
        weight, bias = self._keep_head(context)
        x = _train(self, context, labelled=False).features.double()
        mean = x.mean(0).to(weight.device)
        contribution = (mean[None, :] * weight.double()).cpu()
        mask = torch.zeros_like(contribution, dtype=torch.bool)
        rows, cols = len(weight) // self.members_, weight.shape[1] // self.members_
        for m in range(self.members_):  # one block: the whole head, unless ovr-separate
            block = (slice(m * rows, (m + 1) * rows), slice(m * cols, (m + 1) * cols))
            threshold = float(np.percentile(contribution[block].numpy(), self.sparsity))
            mask[block] = contribution[block] > threshold
        self.mean_activation_ = mean.float()
        self.head_weight_ = (weight.double() * mask.to(weight.device)).float()
        self.sparsity_ = float(self.sparsity)
        self.kept_fraction_ = float(mask.sum()) / (self.members_ * rows * cols)
        self.fit_on_ = "train"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        return head_energy(outputs.features, self.head_weight_, self.head_bias_)


# ----------------------------------------------------------------------------- temperature

#: the search range of the temperature
TEMPERATURE_BOUNDS = (0.01, 100.0)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tol: float = 1e-10,
) -> float:
    """The temperature in ``bounds`` minimising the NLL of ``labels`` under softmax(logits/T).

    The NLL is convex in ``beta = 1/T`` (a log-sum-exp of linear functions minus a linear
    one), so its derivative ``mean(E_p[z] - z_y)`` is increasing: a Newton iteration on it,
    safeguarded by bisection, finds the minimiser; at a bound when the NLL still falls there.
    """
    z = logits.double()
    zy = z.gather(1, labels.to(z.device).long()[:, None])[:, 0]

    def derivatives(beta: float) -> tuple[float, float]:
        p = (beta * z).softmax(dim=1)
        mean = (p * z).sum(1)
        var = (p * z * z).sum(1) - mean**2
        return float((mean - zy).mean()), float(var.clamp_min(0).mean())

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    if derivatives(lo)[0] >= 0:
        return bounds[1]
    if derivatives(hi)[0] <= 0:
        return bounds[0]
    beta = min(max(1.0, lo), hi)
    for _ in range(100):
        g, h = derivatives(beta)
        if abs(g) < tol:  # converged: return this beta, not the next step's
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.nan
        if step == beta or hi - lo < tol * beta:  # no step left that float64 can take
            break
        beta = step if lo < step < hi else (lo + hi) / 2
    return 1.0 / beta


@register
class Temperature(Score):
    """Temperature-scaled max softmax (Guo et al. 2017); ``T`` minimises the validation NLL."""

    name = "temperature"
    description = "max softmax of logits / T, T fitted by NLL on the validation slice"

    def fit(self, context: FitContext) -> Self:
        val = context.val
        if val is None or val.labels is None or len(val) == 0:
            raise InputError("score 'temperature' needs labelled validation images to fit T.")
        k = val.logits.shape[1]
        if int(val.labels.min()) < 0 or int(val.labels.max()) >= k:
            raise InputError(
                f"score 'temperature' fits on known classes only: validation labels must be 0 "
                f"to {k - 1}"
            )
        lo, hi = TEMPERATURE_BOUNDS
        self.fitted_temperature_ = fit_temperature(val.logits, val.labels)
        # at a bound the NLL still fell: e.g. a perfectly separated validation slice (T -> 0)
        self.at_bound_ = not lo * 1.001 < self.fitted_temperature_ < hi / 1.001
        # T -> 0 has no calibrated optimum and saturates every score at 1.0 (ties): use T = 1
        self.degenerate_ = self.fitted_temperature_ <= lo * 1.001
        self.temperature_ = 1.0 if self.degenerate_ else self.fitted_temperature_
        self.val_nll_at_1_ = nll(val.logits.cpu(), val.labels.cpu(), 1.0)
        self.val_nll_ = nll(val.logits.cpu(), val.labels.cpu(), self.temperature_)
        self.fit_on_ = "validation"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        return (outputs.logits.double() / self.temperature_).softmax(dim=1).amax(dim=1)


# ----------------------------------------------------------------------------- GEN


def generalized_entropy(logits: torch.Tensor, gamma: float = 0.1, m: int = 100) -> torch.Tensor:
    """Minus the generalized entropy of Liu, Lochman and Zach (2023), in float64:
    ``-sum_j p_j^gamma (1 - p_j)^gamma`` over each image's ``m`` largest softmax
    probabilities (all of them when there are fewer classes)."""
    p = logits.double().softmax(dim=1)
    top = p.topk(min(int(m), p.shape[1]), dim=1).values
    return -(top.pow(gamma) * (1.0 - top).pow(gamma)).sum(dim=1)


@register
class GEN(Score):
    """GEN (Liu, Lochman and Zach 2023): minus the generalized entropy of the top ``M``
    softmax probabilities (see :func:`generalized_entropy`); fixed settings ``gamma``
    (``--gen-gamma``) and ``M`` (``--gen-m``), nothing learned."""

    name = "gen"
    options = ("gen_gamma", "gen_m")
    description = "minus the generalized entropy sum p^g (1-p)^g of the top-M softmax probabilities"
    stateless = True  # fixed settings: fit only records them

    def __init__(self, gamma: float = 0.1, m: int = 100):
        self.gamma = check_setting(self, "gamma", gamma, "gen_gamma")
        self.m = check_setting(self, "m", m, "gen_m")

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(gamma=config.gen_gamma, m=config.gen_m)

    def fit(self, context: FitContext) -> Self:
        self.gamma_ = float(self.gamma)
        self.m_ = int(self.m)  # more than the classes: all of them
        self.fit_on_ = "nothing (fixed settings)"
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        gamma, m = getattr(self, "gamma_", self.gamma), getattr(self, "m_", self.m)
        return generalized_entropy(outputs.logits, gamma, m)


# ----------------------------------------------------------------------------- OpenMax


def weibull_mle(x: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood Weibull ``(shape, scale)`` with location 0 for positive ``x``.

    The shape solves ``sum(x^c ln x) / sum(x^c) - 1/c - mean(ln x) = 0`` (increasing in c;
    scipy's brentq), then ``scale = mean(x^c)^(1/c)``: the same optimum as
    ``scipy.stats.weibull_min.fit(x, floc=0)``, much faster. ``x`` needs two distinct values.
    """
    from scipy.optimize import brentq

    x = np.asarray(x, float)
    top = float(x.max())
    u = x / top  # the shape does not depend on the unit
    log_u = np.log(u)
    mean_log = float(log_u.mean())

    def g(c: float) -> float:
        w = u**c
        return float((w * log_u).sum() / w.sum()) - 1.0 / c - mean_log

    # the shape grows as the spread shrinks (about 1 / relative spread): bracket it that far
    lo, hi = 1e-3, 1.0
    while g(hi) < 0 and hi < 1e13:
        lo, hi = hi, hi * 4
    shape = brentq(g, lo, hi, xtol=1e-12, rtol=1e-12)
    return float(shape), float(top * np.mean(u**shape) ** (1.0 / shape))


def fit_weibull_tail(distances: np.ndarray, tail_size: int) -> tuple[float, float, int]:
    """Weibull (shape, scale, location 0) fitted to the ``tail_size`` largest distances.

    Returns ``(shape, scale, n_tail)``. With fewer than two distinct positive tail values
    the fit is degenerate; then shape 1 and scale = the tail mean are used (scale 1 for an
    empty tail: :class:`OpenMax` replaces that with the other classes' median).
    """
    tail = np.sort(np.asarray(distances, float))[-tail_size:]
    tail = tail[tail > 0]
    if len(tail) < 2 or np.ptp(tail) <= 1e-9 * float(tail.max()):
        return 1.0, max(float(tail.mean()) if len(tail) else 1.0, 1e-12), len(tail)
    shape, scale = weibull_mle(tail)
    return shape, scale, len(tail)


def openmax_probabilities(
    logits: torch.Tensor,
    mavs: torch.Tensor,
    shape: torch.Tensor,
    scale: torch.Tensor,
    alpha: int,
) -> torch.Tensor:
    """OpenMax probabilities ``N x (K+1)``; column 0 is "unknown".

    The top ``alpha`` classes by logit, rank ``r = 0..alpha-1``, are revised with weights
    ``(alpha - r) / alpha``: ``v_k <- v_k (1 - w_r CDF_k(||v - mav_k||))`` where ``CDF_k`` is
    class k's Weibull; the unknown logit is the sum of what was taken away.
    """
    v = logits.double()
    dist = torch.cdist(v, mavs.double().to(v.device), compute_mode="donot_use_mm_for_euclid_dist")
    sh, sc = shape.double().to(v.device), scale.double().to(v.device)
    wscore = 1 - torch.exp(-((dist / sc).clamp_min(0) ** sh))
    alpha = min(alpha, v.shape[1])
    ranks = v.argsort(dim=1, descending=True)[:, :alpha]
    weights = torch.zeros_like(v)
    rank_weights = (alpha - torch.arange(alpha, device=v.device, dtype=v.dtype)) / alpha
    weights.scatter_(1, ranks, rank_weights.expand(len(v), alpha))
    revised = v * (1 - weights * wscore)
    unknown = (v - revised).sum(dim=1, keepdim=True)
    return torch.cat([unknown, revised], dim=1).softmax(dim=1)


@register
class OpenMax(Score):
    """Bendale and Boult (2016).

    Mean activation vectors (logit vectors) per class from the correctly classified training
    images (all of the class's images when none is correct); a Weibull fitted with scipy to
    the ``tail_size`` largest Euclidean distances of each class's images to its mean; the top
    ``alpha`` logits revised as in the authors' code. Score ``1 - P(unknown)``; OpenMax's own
    decision (unseen when P(unknown) is the largest probability) is reported beside it.
    """

    name = "openmax"
    options = ("openmax_tail", "openmax_alpha")
    description = (
        "1 - P(unknown) after Weibull recalibration of the top logits (Bendale and Boult 2016)"
    )
    needs_train = True

    def __init__(self, tail_size: int = 20, alpha: int = 3):
        tail_size = check_setting(self, "tail_size", tail_size, "openmax_tail")
        alpha = check_setting(self, "alpha", alpha, "openmax_alpha")
        self.tail_size = tail_size
        self.alpha = alpha

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(tail_size=config.openmax_tail, alpha=config.openmax_alpha)

    def fit(self, context: FitContext) -> Self:
        train = _train(self, context)
        logits, labels = train.logits.double().cpu(), train.labels.cpu()
        k = context.num_classes
        correct = logits.argmax(1) == labels
        mavs, shapes, scales, tails = [], [], [], []
        for c in range(k):
            use = (labels == c) & correct
            if not bool(use.any()):
                use = labels == c
            if not bool(use.any()):
                raise InputError(f"known class {c} has no training images for OpenMax to fit.")
            av = logits[use]
            mav = av.mean(0)
            shape, scale, n_tail = fit_weibull_tail((av - mav).norm(dim=1).numpy(), self.tail_size)
            mavs.append(mav)
            shapes.append(shape)
            scales.append(scale)
            tails.append(n_tail)
        # a class whose tail holds no positive distance (one training image, or identical
        # ones) has nothing to fit: it borrows the median Weibull of the classes that have
        # one, on the same logit scale, rather than a fixed scale of 1 that would reject
        # nearly all of its images on large logits and none on small ones
        fitted = [c for c in range(k) if tails[c] > 0]
        for c in range(k):
            if tails[c] == 0 and fitted:
                shapes[c] = float(np.median([shapes[i] for i in fitted]))
                scales[c] = float(np.median([scales[i] for i in fitted]))
        self.mavs_ = torch.stack(mavs)
        self.weibull_shape_ = torch.tensor(shapes, dtype=torch.float64)
        self.weibull_scale_ = torch.tensor(scales, dtype=torch.float64)
        self.tail_counts_ = torch.tensor(tails)
        self.tail_size_ = int(self.tail_size)
        self.alpha_ = int(min(self.alpha, k))
        self.fit_on_ = "train"
        return self

    def probabilities(self, outputs: Outputs) -> torch.Tensor:
        return openmax_probabilities(
            outputs.logits, self.mavs_, self.weibull_shape_, self.weibull_scale_, self.alpha_
        )

    def score(self, outputs: Outputs) -> torch.Tensor:
        return 1 - self.probabilities(outputs)[:, 0]

    def accepts(self, outputs: Outputs) -> torch.Tensor:
        """OpenMax's own rule: known unless the unknown probability is the largest."""
        return self.probabilities(outputs).argmax(dim=1) != 0

    def own_prediction(self, outputs: Outputs) -> torch.Tensor:
        """OpenMax's class: the largest recalibrated known-class probability, which need not
        be the largest logit's class."""
        return self.probabilities(outputs)[:, 1:].argmax(dim=1)

    def fit_summary(self) -> dict[str, Any]:
        out = super().fit_summary()
        out["weibull_shape"] = self.weibull_shape_.tolist()
        out["weibull_scale"] = self.weibull_scale_.tolist()
        out["tail_counts"] = self.tail_counts_.tolist()
        return out


# ----------------------------------------------------------------------------- ODIN


def _fp32_head_logits(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision: str
) -> torch.Tensor:
    """Logits as :func:`unseen.evaluate.forward_pass` makes them: the features under
    ``precision``'s autocast, the head (``forward_head``) in fp32 -- at T = 1000, bf16 logits'
    rounding would be as large as the perturbation's effect. A model without
    ``forward_features``/``forward_head`` runs whole under autocast."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        with autocast(device, precision):
            return model(x).float()
    with autocast(device, precision):
        features = model.forward_features(x).float()
    return model.forward_head(features).float()


def odin_scores(
    model: torch.nn.Module,
    images: torch.Tensor,
    temperature: float = 1000.0,
    epsilon: float = 0.0014,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 256,
    desc: str | None = None,
) -> torch.Tensor:
    """ODIN (Liang et al. 2018): ``max softmax(f(x~)/T)`` with ``x~ = x - eps sign(grad_x L)``.

    ``L`` is the cross-entropy of ``f(x)/T`` against the predicted class; ``x`` is the image in
    ``[0, 1]`` (uint8 ``images`` are divided by 255), so ``epsilon`` is in pixel units. The
    authors add ``eps * sign / std`` to normalised inputs, which is the same step in pixel
    units. The perturbed image is not clipped to ``[0, 1]`` (as in the authors' code). With
    ``desc``, a progress bar of that name is shown on a terminal.
    """
    device = torch.device(device)
    images = torch.as_tensor(images)  # a NumPy array too
    was_training = model.training
    model.eval()
    out = []
    bar = image_bar(desc, len(images))
    try:
        for start in range(0, len(images), batch_size):
            xb = images[start : start + batch_size].to(device)
            x = model_input(xb).requires_grad_(True)
            with torch.enable_grad():
                logits = _fp32_head_logits(model, x, device, precision)
                loss = F.cross_entropy(logits / temperature, logits.argmax(1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                z = _fp32_head_logits(
                    model, (x - epsilon * grad.sign()).detach(), device, precision
                )
            out.append((z.double() / temperature).softmax(dim=1).amax(dim=1))
            bar.update(len(xb))
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64, device=device)


@register
class ODIN(Score):
    """ODIN: temperature scaling plus input perturbation; a second pass (with gradients)
    through the model, so it runs only when named (``--scores all`` leaves it out)."""

    name = "odin"
    options = ("odin_temperature", "odin_epsilon")
    description = (
        "temperature plus input perturbation (Liang et al. 2018); extra passes, run only when named"
    )
    needs_model = True
    in_all = False
    stateless = True  # fixed settings: fit only records them

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014):
        temperature = check_setting(self, "temperature", temperature, "odin_temperature")
        epsilon = check_setting(self, "epsilon", epsilon, "odin_epsilon")
        self.temperature = temperature
        self.epsilon = epsilon

    @classmethod
    def from_config(cls, config: Any) -> Self:
        return cls(temperature=config.odin_temperature, epsilon=config.odin_epsilon)

    def fit(self, context: FitContext) -> Self:
        self.temperature_ = float(self.temperature)
        self.epsilon_ = float(self.epsilon)
        self.fit_on_ = "nothing (fixed settings)"
        return self

    def settings(self) -> tuple[float, float]:
        """``(T, epsilon)``: those the score was fitted with (a run's, as restored from
        detectors.pt), else the constructor's."""
        return (
            getattr(self, "temperature_", self.temperature),
            getattr(self, "epsilon_", self.epsilon),
        )

    def score(self, outputs: Outputs) -> torch.Tensor:
        temperature, epsilon = self.settings()
        if epsilon != 0:
            raise InputError(
                "odin perturbs the inputs, so it scores images, not outputs: call "
                "score_images(model, images), or give epsilon=0"
            )
        return (outputs.logits.double() / temperature).softmax(dim=1).amax(dim=1)

    def score_images(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        desc: str | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        return odin_scores(
            model, images, *self.settings(), device, precision, batch_size=batch_size, desc=desc
        )
