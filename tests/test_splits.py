"""Split and remap logic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unseen.config import parse_value
from unseen.data import FASHION_CLASSES, ImageData, load_dataset
from unseen.errors import ConfigError
from unseen.rare import resolve_rare
from unseen.splits import UNSEEN, make_split, split_data


def test_default_holds_out_last_class():
    s = make_split(FASHION_CLASSES)
    assert s.unseen == (9,) and s.known == tuple(range(9))
    assert s.unseen_names == ["Ankle boot"]


def test_holdout_class_zero_remaps_the_rest():
    s = make_split(tuple("abcd"), holdout=("0",))
    assert s.known == (1, 2, 3)
    assert s.remap(torch.tensor([0, 1, 2, 3, 1])).tolist() == [UNSEEN, 0, 1, 2, 0]
    assert s.to_dict()["mapping"] == {"b": 0, "c": 1, "d": 2}


def test_holdout_by_name_case_insensitive_and_several():
    s = make_split(FASHION_CLASSES, holdout=("ankle boot", "Sandal"))
    assert s.unseen == (5, 9)
    assert s.remap(torch.tensor([6, 7, 8])).tolist() == [5, 6, 7]


def test_known_is_the_complement():
    s = make_split(FASHION_CLASSES, known=("0", "1", "Dress"))
    assert s.known == (0, 1, 3)
    assert len(s.unseen) == 7


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(holdout=("Hat",)), "'Hat' is not a class"),
        (dict(holdout=("10",)), "'10' is not a class"),
        (dict(holdout=("-1",)), "'-1' is not a class"),
        (dict(known=("1" * 5000,)), "is not a class"),  # beyond int()'s 4,300-digit limit
        (dict(holdout=("\u00b2",)), "'\u00b2' is not a class"),  # isdigit() but not int()
        (dict(holdout=tuple(str(i) for i in range(10))), "every class is held out"),
        (dict(holdout=tuple(str(i) for i in range(9))), "only one known class"),
        (dict(holdout=("1",), known=("2",)), "not both"),
    ],
)
def test_bad_splits_are_one_clear_error(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_split(FASHION_CLASSES, **kwargs)


def test_classes_without_training_images_are_always_held_out():
    classes = ("ant", "bee", "cat", "dog", "fox")
    untrained = (0, 4)  # only the test set has them
    # by default they are the classes held out (not the last class besides them)
    assert make_split(classes, untrained=untrained).unseen == (0, 4)
    # --holdout adds to them; --known is the complement, so leaves them out anyway
    assert make_split(classes, holdout=("cat",), untrained=untrained).unseen == (0, 2, 4)
    assert make_split(classes, known=("bee", "cat"), untrained=untrained).unseen == (0, 3, 4)
    # the rare-class default holds none out, except these
    assert make_split(classes, rare=[(1, 0.1)], untrained=untrained).unseen == (0, 4)
    with pytest.raises(ConfigError, match="--known names 'fox', which has no training images"):
        make_split(classes, known=("bee", "fox"), untrained=untrained)
    with pytest.raises(ConfigError, match="--rare class 'ant' has no training images"):
        make_split(classes, rare=[(0, 0.5)], untrained=untrained)
    with pytest.raises(ConfigError, match="only one known class"):
        make_split(classes, holdout=("bee", "cat"), untrained=untrained)
    with pytest.raises(ConfigError, match="has only 2 classes, and holding one out needs three"):
        make_split(("yes", "no"))  # the default holds out the last class


def test_a_one_class_dataset_is_named_as_such():
    with pytest.raises(ConfigError, match=r"the dataset has one class only \(cat\)"):
        make_split(("cat",))


def _toy(n_per_class=20, classes=4) -> ImageData:
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 255, (len(y), 1, 4, 4), dtype=torch.uint8)
    return ImageData("toy", x, y, x.clone(), y.clone(), tuple("abcd"[:classes]), "test")


def test_split_data_excludes_unseen_from_training_and_keeps_validation_apart():
    data = _toy()
    s = make_split(data.classes, holdout=("b",))
    sd = split_data(data, s, val_fraction=0.25, seed=3)
    assert len(sd.x_train) + len(sd.x_val) == 60  # three known classes x 20
    assert set(sd.y_train.tolist()) == {0, 1, 2} and set(sd.y_val.tolist()) == {0, 1, 2}
    assert np.bincount(sd.y_val.numpy()).tolist() == [5, 5, 5]  # stratified
    assert (sd.y_test == UNSEEN).sum() == 20
    assert sd.y_test_original[sd.y_test == UNSEEN].unique().tolist() == [1]
    # seeded: same seed same slice, another seed another slice
    again = split_data(data, s, val_fraction=0.25, seed=3)
    other = split_data(data, s, val_fraction=0.25, seed=4)
    assert torch.equal(sd.x_val, again.x_val)
    assert not torch.equal(sd.x_val, other.x_val)


@pytest.mark.parametrize(
    ("fraction", "fragment"),
    [
        (1e-12, "keeps 1 of 60 known-class training images for validation"),
        (0.03, "keeps 2 of 60"),  # ceil(1.8): fewer than one image of each of 3 classes
        (0.96, "leaves 2 of 60 known-class training images to train on"),
    ],
)
def test_a_validation_fraction_too_small_or_large_for_the_classes_is_a_config_error(
    fraction, fragment
):
    data = _toy()  # three known classes of 20 images
    s = make_split(data.classes, holdout=("b",))
    with pytest.raises(ConfigError, match=fragment):
        split_data(data, s, val_fraction=fraction)


def test_the_fractions_the_error_suggests_work():
    data = _toy()
    s = make_split(data.classes, holdout=("b",))
    for fraction in (1e-12, 0.99):
        with pytest.raises(ConfigError) as err:
            split_data(data, s, val_fraction=fraction)
        suggested = float(str(err.value).split("use ")[1].split(" ")[0])
        sd = split_data(data, s, val_fraction=suggested)
        assert set(sd.y_val.tolist()) == set(sd.y_train.tolist()) == {0, 1, 2}


def _uneven(counts: list[int]) -> ImageData:
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    x = torch.arange(len(y), dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 2, 2).clone()
    classes = tuple("abcdefgh"[: len(counts)])
    return ImageData("uneven", x, y, x.clone(), y.clone(), classes, "test")


@pytest.mark.parametrize("seed", range(30))
def test_a_class_with_one_image_is_trained_on_and_the_rest_stay_stratified(seed):
    # before: one single-image class turned stratification off for every class, and a
    # random slice could take the only images of a small known class into validation
    data = _uneven([1, 3, 60, 60, 5])  # 'e' (5 images) is held out
    s = make_split(data.classes, holdout=("e",))
    sd = split_data(data, s, val_fraction=0.1, seed=seed)
    assert set(sd.y_train.tolist()) == {0, 1, 2, 3}  # every known class is trained on
    assert 0 not in sd.y_val.tolist()  # the single image of 'a' is never held back
    per_class = np.bincount(sd.y_val.numpy(), minlength=4).tolist()
    assert per_class[1] <= 1 and 6 <= per_class[2] <= 7 and 6 <= per_class[3] <= 7  # stratified
    assert len(sd.x_train) + len(sd.x_val) == 124


def test_a_validation_fraction_that_would_leave_a_class_untrained_is_refused():
    data = _uneven([2, 100, 5])
    s = make_split(data.classes, holdout=("c",))
    with pytest.raises(ConfigError, match="leaves known class 'a' no training image"):
        split_data(data, s, val_fraction=0.8, seed=0)


def test_class_names_with_their_own_spaces_are_found():
    s = make_split(("cat ", "dog", "bird"), holdout=("cat ",))
    assert s.unseen == (0,)
    assert make_split(("cat ", "dog", "bird"), holdout=("Cat",)).unseen == (0,)
    assert make_split(("cat", "dog", "bird"), holdout=(" cat",)).unseen == (0,)


def test_subsets_are_stratified():
    data = _toy(n_per_class=50)
    s = make_split(data.classes)
    sd = split_data(data, s, train_subset=80, test_subset=40, seed=0)
    assert len(sd.x_train) + len(sd.x_val) == 60  # 80 drawn, the held-out quarter dropped
    assert np.bincount(sd.y_test_original.numpy()).tolist() == [10, 10, 10, 10]


def test_digits_default_split_sizes():
    data = load_dataset("digits")
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 1797
    sd = split_data(data, make_split(data.classes), val_fraction=0.1, seed=0)
    assert (sd.y_train >= 0).all() and int(sd.test_is_unseen.sum()) == int((data.y_test == 9).sum())


def test_subsets_close_to_the_full_size_work():
    # 198 of 200: the two left out cannot hold one image of each of the 4 classes, so the
    # subset is drawn without stratification instead of failing inside scikit-learn
    data = _toy(n_per_class=50)
    s = make_split(data.classes)
    sd = split_data(data, s, train_subset=198, test_subset=199, seed=0)
    assert 148 <= len(sd.x_train) + len(sd.x_val) <= 150  # 150 known, two images dropped
    assert len(sd.x_test) == 199


def test_a_known_class_without_training_images_is_an_error():
    data = _toy()
    keep = data.y_train != 2  # class "c" only in the test set
    data = ImageData("toy", data.x_train[keep], data.y_train[keep], data.x_test, data.y_test,
                     data.classes, "test")  # fmt: skip
    with pytest.raises(ConfigError, match="known class 'c' has no training images: hold it out"):
        split_data(data, make_split(data.classes))
    sd = split_data(data, make_split(data.classes, holdout=("c",)))  # held out: fine
    assert int(sd.test_is_unseen.sum()) == 20


def test_many_known_classes_without_training_images_are_counted_not_listed():
    # npz labels with gaps (0, 40000, 80000) made 80,000 classes and a 709 kB error line
    y = torch.arange(3).repeat_interleave(10) * 400
    x = torch.zeros(len(y), 1, 4, 4, dtype=torch.uint8)
    names = tuple(str(i) for i in range(801))
    data = ImageData("gaps", x, y, x.clone(), y.clone(), names, "test")
    with pytest.raises(ConfigError) as err:
        split_data(data, make_split(names))
    assert "'1', '2', '3', '4', '5', '6', '7', '8', '9', '10', ... (798 in all) have" in str(
        err.value
    )
    assert len(str(err.value)) < 300
    npz = ImageData("npz:gaps.npz", x, y, x.clone(), y.clone(), names, "test")  # said why
    with pytest.raises(
        ConfigError,
        match=r"hold them out \(--holdout\), name the classes to train on \(--known\), or, if the npz's labels skip numbers",
    ):
        split_data(npz, make_split(names))


def test_class_names_differing_in_case_resolve_exactly_or_fail():
    classes = ("Cat", "cat", "dog", "CAT")
    assert make_split(classes, holdout=("Cat",)).unseen == (0,)
    assert make_split(classes, holdout=("cat",)).unseen == (1,)
    assert make_split(classes, holdout=("DOG",)).unseen == (2,)
    with pytest.raises(ConfigError, match="'cAt' could mean 'Cat' and 'cat' and 'CAT'"):
        make_split(classes, holdout=("cAt",))


def test_two_tokens_naming_one_class_are_refused():
    # folders named by numbers: '0' is index 0 (the class named '1') and '1' that name
    classes = ("1", "10", "2", "3")
    with pytest.raises(ConfigError, match=r"--holdout '0' and '1' both name class 0 \('1'\)"):
        make_split(classes, holdout=("0", "1"))
    assert make_split(classes, holdout=("1", "1")).unseen == (0,)  # one token twice is fine
    assert make_split(FASHION_CLASSES, holdout=("9", "Bag")).unseen == (8, 9)


def test_class_names_compare_in_nfc_form_and_a_comma_name_gets_a_hint():
    import unicodedata

    composed = "Sac à main"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert make_split(("Café", decomposed, "x"), holdout=(composed,)).unseen == (1,)
    assert make_split(("Café", composed, "x"), holdout=(decomposed,)).unseen == (1,)
    # an exact name wins; two classes equal in NFC form are ambiguous to any other token
    both = (composed, decomposed, "x")
    assert make_split(both, holdout=(decomposed,)).unseen == (1,)
    with pytest.raises(ConfigError, match="could mean"):
        make_split(both, holdout=("sac à main",))
    # commas split the option: a name holding one is given in double quotes, or by index
    assert make_split(("Shirt, long", "Coat", "x"), holdout=("Shirt, long",)).unseen == (0,)
    with pytest.raises(
        ConfigError, match="commas separate classes: put a name that holds one in double quotes"
    ):
        make_split(("Shirt, long", "Coat", "x"), holdout=("Shirt", "long"))
    for given in ('"Shirt, long",x', ' "Shirt, long", x'):
        holdout = parse_value("holdout", given)
        assert make_split(("Shirt, long", "Coat", "x", "y"), holdout=holdout).unseen == (0, 2)
    # a list in a config file (or config.json) keeps such a name whole
    assert parse_value("holdout", ["Shirt, long", 'say "hi"'], source="file") == (
        "Shirt, long",
        'say "hi"',
    )
    with pytest.raises(ConfigError, match="--holdout must be one or more class"):
        parse_value("holdout", '"Shirt, long')
    # --rare items too (CLASS:FRACTION, the whole item in quotes); other lists as before
    assert parse_value("rare", ['say "hi":0.5'], source="file") == ('say "hi":0.5',)
    assert parse_value("rare", '"Shirt, long:0.1", x:0.5') == ("Shirt, long:0.1", "x:0.5")
    assert parse_value("rare", ["Shirt, long:0.1"], source="file") == ("Shirt, long:0.1",)
    assert (
        make_split(
            ("Shirt, long", "Coat", "x"),
            rare=resolve_rare(("Shirt, long:0.1",), ("Shirt, long", "Coat", "x")),
        ).unseen
        == ()
    )
    assert parse_value("scores", ["msp", "energy"], source="file") == ("msp", "energy")
    with pytest.raises(ConfigError, match="--rare items are CLASS:FRACTION, comma-separated"):
        parse_value("rare", '"Shirt, long:0.1')
    assert parse_value("known", ["a\nb", "c"], source="file") == ("a\nb", "c")
    with pytest.raises(ConfigError, match="--holdout must be one or more class"):
        parse_value("holdout", "3\n5")  # a line break does not separate classes
