import numpy as np
import pytest

from detectors.builtin_sets import FLOW_MARGIN, FLOW_RELEVANT_FEATURES, FLOW_THRESHOLD, make_flows
from detectors.data import align_table, load_table, read_csv, split_table, stratified_subset
from detectors.table import Scaler
from detectors.errors import BadInputError


def test_flows_has_named_features_known_relevant_subset_and_margin():
    table = make_flows(4000, seed=0)
    assert len(table.feature_names) >= 20 and len(set(table.feature_names)) == len(table.feature_names)
    assert table.relevant_features == list(FLOW_RELEVANT_FEATURES)
    assert table.class_names[table.positive_class] == "attack"
    assert 0.28 <= table.y.mean() <= 0.32
    splits = split_table(table, seed=0)
    cols = [splits.test.feature_names.index(f) for f in FLOW_RELEVANT_FEATURES]
    score = splits.test.x[:, cols].mean(axis=1)
    # the label is exactly the rule on the relevant features (min-max scaling keeps them in [0, 1])
    assert ((score > FLOW_THRESHOLD) == splits.test.y).mean() > 0.99
    assert (np.abs(score - FLOW_THRESHOLD) > 0.05).mean() > 0.9
    assert FLOW_MARGIN > 0.05


def test_flows_default_size_gives_thousands_of_test_rows():
    splits = split_table(load_table("flows"), seed=0)
    assert len(splits.test) >= 4000
    assert splits.test.name == "flows"


def test_flows_size_option_and_determinism():
    a, b = load_table("flows:500"), load_table("flows:500")
    assert a.x.shape[0] == 500 and np.array_equal(a.x, b.x) and a.name == "flows:500"
    with pytest.raises(BadInputError, match="row count"):
        load_table("flows:many")


def test_breast_cancer_positive_class_is_malignant():
    table = load_table("breast-cancer")
    assert table.x.shape == (569, 30)
    assert table.class_names[table.positive_class] == "malignant"
    assert table.positive_class == 0  # scikit-learn's label 0


def test_split_scales_to_unit_box_with_scaler_fitted_on_train():
    splits = split_table(load_table("breast-cancer"), seed=3)
    assert splits.train.x.min() == 0.0 and splits.train.x.max() == 1.0
    for part in (splits.val, splits.test):
        assert part.x.min() >= 0.0 and part.x.max() <= 1.0
    assert len(set(splits.train.row_index) & set(splits.test.row_index)) == 0
    restored = Scaler.from_dict(splits.scaler.to_dict())
    assert np.array_equal(restored.lo, splits.scaler.lo)


def test_stratified_subset_is_seeded_and_keeps_class_shares():
    test = split_table(load_table("flows:4000"), seed=0).test
    a = stratified_subset(test, 200, seed=1)
    b = stratified_subset(test, 200, seed=1)
    assert len(a) == 200 and np.array_equal(a.row_index, b.row_index)
    assert abs(a.y.mean() - test.y.mean()) < 0.02
    assert stratified_subset(test, 0, seed=1) is test


def test_csv_quoted_and_non_ascii_headers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('"bytes, sent","größe",label\n1,2,a\n3,4,b\n5,6,a\n', encoding="utf-8")
    table = read_csv(path, label_column="label")
    assert table.feature_names == ["bytes, sent", "größe"]
    assert table.class_names == ["a", "b"] and table.x.shape == (3, 2)


def test_csv_empty_cell_names_column_and_line(tmp_path):
    """A column that is not all numbers is categorical now (tests/test_categorical.py); an empty cell stays bad."""
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,,1\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"line 3, column 'b': empty is not a finite number"):
        read_csv(path)


def test_csv_nan_is_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,nan,0\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="not a finite number"):
        read_csv(path)


def test_csv_missing_label_column_lists_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,0\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="no label column 'label'.*--label-column"):
        read_csv(path)


def test_csv_numeric_labels_and_positive_class(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,0\n2,1\n3,10\n4,2\n", encoding="utf-8")
    assert read_csv(path).class_names == ["0", "1", "2", "10"]
    table = load_table(str(path), positive_class="10")
    assert table.class_names[table.positive_class] == "10"
    with pytest.raises(BadInputError, match="not a class"):
        load_table(str(path), positive_class="7")


def test_align_matches_columns_by_name_and_reports_missing():
    table = load_table("breast-cancer")
    splits = split_table(table, seed=0)
    shuffled = load_table("breast-cancer")
    order = np.arange(30)[::-1]
    shuffled.x, shuffled.feature_names = shuffled.x[:, order], [shuffled.feature_names[i] for i in order]
    data = align_table(shuffled, feature_names=splits.train.feature_names, class_names=splits.train.class_names,
                       scaler=splits.scaler)
    assert np.allclose(data.x, splits.scaler.transform(table.x))
    shuffled.x, shuffled.feature_names = shuffled.x[:, 1:], shuffled.feature_names[1:]
    with pytest.raises(BadInputError, match=r"expected x of shape \(N, 30\).*got \(N, 29\)"):
        align_table(shuffled, feature_names=splits.train.feature_names, class_names=splits.train.class_names,
                    scaler=splits.scaler)


def test_unknown_data_spec():
    with pytest.raises(BadInputError, match="unknown data"):
        load_table("mnist")


def test_fewer_samples_than_classes_is_refused_not_a_crash():
    """`audit run --max-samples 8` on a 10-class checkpoint exited 3 (scikit-learn's stratified split raised)."""
    test = split_table(load_table("digits"), seed=0).test
    with pytest.raises(BadInputError, match="--max-samples 8 is below the 10 classes"):
        stratified_subset(test, 8, seed=0)
    assert sorted(set(stratified_subset(test, 10, seed=0).y.tolist())) == list(range(10))
