"""ADE20K panoptic segmentation (150 classes) registered as Mask2Former registers it.

Names: ``ade20k_panoptic_train`` and ``ade20k_panoptic_val``, with files under
``$DETECTRON2_DATASETS/ADEChallengeData2016/`` as Mask2Former's ``prepare_ade20k_*.py`` scripts
leave them::

    images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
    ade20k_panoptic_{train,val}.json           COCO panoptic JSON; image ids are file stems
    ade20k_panoptic_{train,val}/*.png          segment ids encoded with panopticapi's id2rgb
    annotations_detectron2/{training,validation}/*.png   semantic: class 0..149, 255 = void
    ade20k_instance_{train,val}.json           COCO instances JSON of the thing segments

Category ids are the 150 scene-parsing classes, 0..149, so contiguous id == dataset id. As in
Mask2Former, ``stuff_classes`` and ``stuff_dataset_id_to_contiguous_id`` cover all 150 classes
(things included, for the semantic evaluator) while ``thing_classes`` lists the 100 things.
Registration is explicit (:func:`register_ade20k_panoptic`, or
:func:`detr_panoptic_d2.data.datasets.register_plugin_datasets`); importing does not register.
"""

from .coco_panoptic_semseg import (
    load_panoptic_with_sem_seg_json,
    panoptic_with_sem_seg_metadata,
    register_panoptic_with_sem_seg,
)

__all__ = [
    "ADE20K_150_CATEGORIES",
    "ADE20K_INSTANCE_CATEGORIES",
    "ADE20K_PANOPTIC_SPLITS",
    "get_ade20k_panoptic_metadata",
    "load_ade20k_panoptic_json",
    "register_ade20k_panoptic",
]

# The 150 ADE20K scene-parsing classes as panoptic categories:
# (dataset id, isthing, RGB colour, name). Names are the scene-parsing names, verbatim
# ("window " keeps its trailing space). The 100 things are the classes of ADE20K's instance
# annotations.
_ADE20K_150 = [
    (0, 0, (120, 120, 120), "wall"),
    (1, 0, (180, 120, 120), "building"),
    (2, 0, (6, 230, 230), "sky"),
    (3, 0, (80, 50, 50), "floor"),
    (4, 0, (4, 200, 3), "tree"),
    (5, 0, (120, 120, 80), "ceiling"),
    (6, 0, (140, 140, 140), "road, route"),
    (7, 1, (204, 5, 255), "bed"),
    (8, 1, (230, 230, 230), "window "),
    (9, 0, (4, 250, 7), "grass"),
    (10, 1, (224, 5, 255), "cabinet"),
    (11, 0, (235, 255, 7), "sidewalk, pavement"),
    (12, 1, (150, 5, 61), "person"),
    (13, 0, (120, 120, 70), "earth, ground"),
    (14, 1, (8, 255, 51), "door"),
    (15, 1, (255, 6, 82), "table"),
    (16, 0, (143, 255, 140), "mountain, mount"),
    (17, 0, (204, 255, 4), "plant"),
    (18, 1, (255, 51, 7), "curtain"),
    (19, 1, (204, 70, 3), "chair"),
    (20, 1, (0, 102, 200), "car"),
    (21, 0, (61, 230, 250), "water"),
    (22, 1, (255, 6, 51), "painting, picture"),
    (23, 1, (11, 102, 255), "sofa"),
    (24, 1, (255, 7, 71), "shelf"),
    (25, 0, (255, 9, 224), "house"),
    (26, 0, (9, 7, 230), "sea"),
    (27, 1, (220, 220, 220), "mirror"),
    (28, 0, (255, 9, 92), "rug"),
    (29, 0, (112, 9, 255), "field"),
    (30, 1, (8, 255, 214), "armchair"),
    (31, 1, (7, 255, 224), "seat"),
    (32, 1, (255, 184, 6), "fence"),
    (33, 1, (10, 255, 71), "desk"),
    (34, 0, (255, 41, 10), "rock, stone"),
    (35, 1, (7, 255, 255), "wardrobe, closet, press"),
    (36, 1, (224, 255, 8), "lamp"),
    (37, 1, (102, 8, 255), "tub"),
    (38, 1, (255, 61, 6), "rail"),
    (39, 1, (255, 194, 7), "cushion"),
    (40, 0, (255, 122, 8), "base, pedestal, stand"),
    (41, 1, (0, 255, 20), "box"),
    (42, 1, (255, 8, 41), "column, pillar"),
    (43, 1, (255, 5, 153), "signboard, sign"),
    (44, 1, (6, 51, 255), "chest of drawers, chest, bureau, dresser"),
    (45, 1, (235, 12, 255), "counter"),
    (46, 0, (160, 150, 20), "sand"),
    (47, 1, (0, 163, 255), "sink"),
    (48, 0, (140, 140, 140), "skyscraper"),
    (49, 1, (250, 10, 15), "fireplace"),
    (50, 1, (20, 255, 0), "refrigerator, icebox"),
    (51, 0, (31, 255, 0), "grandstand, covered stand"),
    (52, 0, (255, 31, 0), "path"),
    (53, 1, (255, 224, 0), "stairs"),
    (54, 0, (153, 255, 0), "runway"),
    (55, 1, (0, 0, 255), "case, display case, showcase, vitrine"),
    (56, 1, (255, 71, 0), "pool table, billiard table, snooker table"),
    (57, 1, (0, 235, 255), "pillow"),
    (58, 1, (0, 173, 255), "screen door, screen"),
    (59, 0, (31, 0, 255), "stairway, staircase"),
    (60, 0, (11, 200, 200), "river"),
    (61, 0, (255, 82, 0), "bridge, span"),
    (62, 1, (0, 255, 245), "bookcase"),
    (63, 0, (0, 61, 255), "blind, screen"),
    (64, 1, (0, 255, 112), "coffee table"),
    (65, 1, (0, 255, 133), "toilet, can, commode, crapper, pot, potty, stool, throne"),
    (66, 1, (255, 0, 0), "flower"),
    (67, 1, (255, 163, 0), "book"),
    (68, 0, (255, 102, 0), "hill"),
    (69, 1, (194, 255, 0), "bench"),
    (70, 1, (0, 143, 255), "countertop"),
    (71, 1, (51, 255, 0), "stove"),
    (72, 1, (0, 82, 255), "palm, palm tree"),
    (73, 1, (0, 255, 41), "kitchen island"),
    (74, 1, (0, 255, 173), "computer"),
    (75, 1, (10, 0, 255), "swivel chair"),
    (76, 1, (173, 255, 0), "boat"),
    (77, 0, (0, 255, 153), "bar"),
    (78, 1, (255, 92, 0), "arcade machine"),
    (79, 0, (255, 0, 255), "hovel, hut, hutch, shack, shanty"),
    (80, 1, (255, 0, 245), "bus"),
    (81, 1, (255, 0, 102), "towel"),
    (82, 1, (255, 173, 0), "light"),
    (83, 1, (255, 0, 20), "truck"),
    (84, 0, (255, 184, 184), "tower"),
    (85, 1, (0, 31, 255), "chandelier"),
    (86, 1, (0, 255, 61), "awning, sunshade, sunblind"),
    (87, 1, (0, 71, 255), "street lamp"),
    (88, 1, (255, 0, 204), "booth"),
    (89, 1, (0, 255, 194), "tv"),
    (90, 1, (0, 255, 82), "plane"),
    (91, 0, (0, 10, 255), "dirt track"),
    (92, 1, (0, 112, 255), "clothes"),
    (93, 1, (51, 0, 255), "pole"),
    (94, 0, (0, 194, 255), "land, ground, soil"),
    (95, 1, (0, 122, 255), "bannister, banister, balustrade, balusters, handrail"),
    (96, 0, (0, 255, 163), "escalator, moving staircase, moving stairway"),
    (97, 1, (255, 153, 0), "ottoman, pouf, pouffe, puff, hassock"),
    (98, 1, (0, 255, 10), "bottle"),
    (99, 0, (255, 112, 0), "buffet, counter, sideboard"),
    (100, 0, (143, 255, 0), "poster, posting, placard, notice, bill, card"),
    (101, 0, (82, 0, 255), "stage"),
    (102, 1, (163, 255, 0), "van"),
    (103, 1, (255, 235, 0), "ship"),
    (104, 1, (8, 184, 170), "fountain"),
    (105, 0, (133, 0, 255), "conveyer belt, conveyor belt, conveyer, conveyor, transporter"),
    (106, 0, (0, 255, 92), "canopy"),
    (107, 1, (184, 0, 255), "washer, automatic washer, washing machine"),
    (108, 1, (255, 0, 31), "plaything, toy"),
    (109, 0, (0, 184, 255), "pool"),
    (110, 1, (0, 214, 255), "stool"),
    (111, 1, (255, 0, 112), "barrel, cask"),
    (112, 1, (92, 255, 0), "basket, handbasket"),
    (113, 0, (0, 224, 255), "falls"),
    (114, 0, (112, 224, 255), "tent"),
    (115, 1, (70, 184, 160), "bag"),
    (116, 1, (163, 0, 255), "minibike, motorbike"),
    (117, 0, (153, 0, 255), "cradle"),
    (118, 1, (71, 255, 0), "oven"),
    (119, 1, (255, 0, 163), "ball"),
    (120, 1, (255, 204, 0), "food, solid food"),
    (121, 1, (255, 0, 143), "step, stair"),
    (122, 0, (0, 255, 235), "tank, storage tank"),
    (123, 1, (133, 255, 0), "trade name"),
    (124, 1, (255, 0, 235), "microwave"),
    (125, 1, (245, 0, 255), "pot"),
    (126, 1, (255, 0, 122), "animal"),
    (127, 1, (255, 245, 0), "bicycle"),
    (128, 0, (10, 190, 212), "lake"),
    (129, 1, (214, 255, 0), "dishwasher"),
    (130, 1, (0, 204, 255), "screen"),
    (131, 0, (20, 0, 255), "blanket, cover"),
    (132, 1, (255, 255, 0), "sculpture"),
    (133, 1, (0, 153, 255), "hood, exhaust hood"),
    (134, 1, (0, 41, 255), "sconce"),
    (135, 1, (0, 255, 204), "vase"),
    (136, 1, (41, 0, 255), "traffic light"),
    (137, 1, (41, 255, 0), "tray"),
    (138, 1, (173, 0, 255), "trash can"),
    (139, 1, (0, 245, 255), "fan"),
    (140, 0, (71, 0, 255), "pier"),
    (141, 0, (122, 0, 255), "crt screen"),
    (142, 1, (0, 255, 184), "plate"),
    (143, 1, (0, 92, 255), "monitor"),
    (144, 1, (184, 255, 0), "bulletin board"),
    (145, 0, (0, 133, 255), "shower"),
    (146, 1, (255, 214, 0), "radiator"),
    (147, 1, (25, 194, 194), "glass, drinking glass"),
    (148, 1, (102, 255, 0), "clock"),
    (149, 1, (92, 0, 255), "flag"),
]

ADE20K_150_CATEGORIES = [
    {"color": list(color), "id": cid, "isthing": isthing, "name": name}
    for cid, isthing, color, name in _ADE20K_150
]

# Categories of the instance JSON (``ade20k_instance_*.json``): the 100 thing classes under their
# panoptic ids, with the short names of ADE20K's instance annotations.
_ADE20K_INSTANCE_NAMES = {
    7: "bed", 8: "windowpane", 10: "cabinet", 12: "person", 14: "door", 15: "table", 18: "curtain",
    19: "chair", 20: "car", 22: "painting", 23: "sofa", 24: "shelf", 27: "mirror", 30: "armchair",
    31: "seat", 32: "fence", 33: "desk", 35: "wardrobe", 36: "lamp", 37: "bathtub", 38: "railing",
    39: "cushion", 41: "box", 42: "column", 43: "signboard", 44: "chest of drawers", 45: "counter",
    47: "sink", 49: "fireplace", 50: "refrigerator", 53: "stairs", 55: "case", 56: "pool table",
    57: "pillow", 58: "screen door", 62: "bookcase", 64: "coffee table", 65: "toilet",
    66: "flower", 67: "book", 69: "bench", 70: "countertop", 71: "stove", 72: "palm",
    73: "kitchen island", 74: "computer", 75: "swivel chair", 76: "boat", 78: "arcade machine",
    80: "bus", 81: "towel", 82: "light", 83: "truck", 85: "chandelier", 86: "awning",
    87: "streetlight", 88: "booth", 89: "television receiver", 90: "airplane", 92: "apparel",
    93: "pole", 95: "bannister", 97: "ottoman", 98: "bottle", 102: "van", 103: "ship",
    104: "fountain", 107: "washer", 108: "plaything", 110: "stool", 111: "barrel", 112: "basket",
    115: "bag", 116: "minibike", 118: "oven", 119: "ball", 120: "food", 121: "step",
    123: "trade name", 124: "microwave", 125: "pot", 126: "animal", 127: "bicycle",
    129: "dishwasher", 130: "screen", 132: "sculpture", 133: "hood", 134: "sconce", 135: "vase",
    136: "traffic light", 137: "tray", 138: "ashcan", 139: "fan", 142: "plate", 143: "monitor",
    144: "bulletin board", 146: "radiator", 147: "glass", 148: "clock", 149: "flag",
}  # fmt: skip

ADE20K_INSTANCE_CATEGORIES = [{"id": k, "name": v} for k, v in _ADE20K_INSTANCE_NAMES.items()]

# name -> (image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json), relative to
# the data set root ($DETECTRON2_DATASETS).
ADE20K_PANOPTIC_SPLITS = {
    "ade20k_panoptic_train": (
        "ADEChallengeData2016/images/training",
        "ADEChallengeData2016/ade20k_panoptic_train",
        "ADEChallengeData2016/ade20k_panoptic_train.json",
        "ADEChallengeData2016/annotations_detectron2/training",
        "ADEChallengeData2016/ade20k_instance_train.json",
    ),
    "ade20k_panoptic_val": (
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/ade20k_panoptic_val",
        "ADEChallengeData2016/ade20k_panoptic_val.json",
        "ADEChallengeData2016/annotations_detectron2/validation",
        "ADEChallengeData2016/ade20k_instance_val.json",
    ),
}


def get_ade20k_panoptic_metadata():
    """Class metadata of the ADE20K panoptic splits.

    Returns:
        dict with thing_classes / thing_colors (the 100 things), stuff_classes / stuff_colors
        (all 150 classes), thing_dataset_id_to_contiguous_id (things) and
        stuff_dataset_id_to_contiguous_id (all classes); contiguous ids index the 150 classes.
    """
    return panoptic_with_sem_seg_metadata(ADE20K_150_CATEGORIES)


def load_ade20k_panoptic_json(json_file, image_dir, gt_dir, semseg_dir, meta):
    """Read an ADE20K panoptic JSON into detectron2 dataset dicts.

    Args:
        json_file: e.g. ".../ADEChallengeData2016/ade20k_panoptic_val.json".
        image_dir: e.g. ".../ADEChallengeData2016/images/validation" (images are "<stem>.jpg").
        gt_dir: folder of the panoptic PNGs named in the JSON.
        semseg_dir: folder of the semantic PNGs, same file names as the panoptic PNGs.
        meta: dict with thing_dataset_id_to_contiguous_id and stuff_dataset_id_to_contiguous_id.

    Returns:
        list[dict] with file_name, image_id (the JSON's image id, a string such as
        "ADE_val_00000001"), pan_seg_file_name, sem_seg_file_name and segments_info (category_id
        contiguous, isthing added).
    """
    return load_panoptic_with_sem_seg_json(json_file, image_dir, gt_dir, semseg_dir, meta)


def register_ade20k_panoptic(
    name, metadata, image_root, panoptic_root, semantic_root, panoptic_json, instances_json=None
):
    """Register an ADE20K-style panoptic data set ``name`` with detectron2's catalogs.

    Args:
        name: e.g. "ade20k_panoptic_train".
        metadata: class metadata, e.g. :func:`get_ade20k_panoptic_metadata`.
        image_root: folder of the JPEG images.
        panoptic_root: folder of the panoptic PNGs.
        semantic_root: folder of the semantic PNGs (class ids, 255 = void).
        panoptic_json: COCO panoptic JSON.
        instances_json: COCO instances JSON of the things (for instance evaluation), optional.

    The metadata gets panoptic_root, image_root, panoptic_json, json_file (= instances_json),
    evaluator_type "ade20k_panoptic_seg", ignore_label 255 and label_divisor 1000.
    """
    register_panoptic_with_sem_seg(
        name,
        lambda: load_ade20k_panoptic_json(
            panoptic_json, image_root, panoptic_root, semantic_root, metadata
        ),
        metadata,
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="ade20k_panoptic_seg",
    )
