import pytest

from segicl_data.tasks import AAL_WORDS, aal_group_ids, aal_table, all_structures, readable, slugify, split_laterality


@pytest.mark.parametrize("raw, expected", [
    ("Hippocampus_L", ("left", "Hippocampus")),
    ("Right_Frontal_Pole", ("right", "Frontal_Pole")),
    ("Left-Cerebral-White-Matter", ("left", "Cerebral-White-Matter")),
    ("Brain-Stem", (None, "Brain-Stem")),
    ("Vermis_1_2", (None, "Vermis_1_2")),
])
def test_split_laterality(raw, expected):
    assert split_laterality(raw) == expected


def test_readable_names():
    assert readable("Frontal_Sup_Orb", AAL_WORDS) == "frontal superior orbital"
    assert readable("Lateral_Ventrical") == "lateral ventricle"
    assert readable("Cingulum_(cingulate_gyrus)") == "cingulum cingulate gyrus"  # JHU tract: no AAL expansion
    assert slugify("Heschl's Gyrus (H1)") == "heschl_s_gyrus_h1"


def test_structures_unique_and_lateral_variants_share_a_family():
    structures = all_structures()
    keys = [s.key for s in structures]
    assert len(keys) == len(set(keys))
    by_key = {s.key: s for s in structures}
    left, right, both = by_key["aal/left_hippocampus"], by_key["aal/right_hippocampus"], by_key["aal/hippocampus_both_sides"]
    assert left.family == right.family == both.family == "hippocampus"
    assert set(both.label_ids) == set(left.label_ids) | set(right.label_ids)
    # The same name in another atlas joins the same family, so it is held out together.
    assert by_key["harvard_oxford/left_hippocampus"].family == "hippocampus"


def test_aal_groups_partition_lateral_regions():
    table = aal_table()
    lobes, hemispheres = aal_group_ids(table)
    grouped = [i for ids in lobes.values() for i in ids]
    assert len(grouped) == len(set(grouped)) == len(table)  # every AAL region in exactly one lobe
    assert not set(hemispheres["left hemisphere"]) & set(hemispheres["right hemisphere"])
    assert all(table[i].endswith("_L") for i in hemispheres["left hemisphere"])
