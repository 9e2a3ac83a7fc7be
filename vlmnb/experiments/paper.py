"""Numbers reported by Kaduri, Bagon & Dekel (2024), for side-by-side tables and figures.

Every value here is quoted from the paper ("What's in the Image? A Deep-Dive into the Vision
of Vision Language Models"); section or figure numbers say where. Values read off a figure
rather than stated in the text are marked ``approx``. Nothing here is computed by vlmnb.
"""
from __future__ import annotations

CITATION = "Kaduri, Bagon & Dekel (2024), What's in the Image?"

MODELS = {
    "InternVL2-76B": {"layers": 80, "image_tokens": "~1600-1700 (dynamic tiles)", "hub_id": "OpenGVLab/InternVL2-Llama3-76B"},
    "LLaVA-1.5-7B": {"layers": 32, "image_tokens": 576, "hub_id": "llava-hf/llava-1.5-7b-hf"},
}
#: every hub id under which the paper's models are published (the original LLaVA repo too)
HUB_IDS = {
    "InternVL2-76B": ("OpenGVLab/InternVL2-Llama3-76B",),
    "LLaVA-1.5-7B": ("llava-hf/llava-1.5-7b-hf", "liuhaotian/llava-v1.5-7b"),
}
#: the depth the paper's layer numbers refer to (InternVL2-76B's 80 decoder layers)
DEPTH = MODELS["InternVL2-76B"]["layers"]

# E1: attention fractions (Sec. 4, Fig. 1) -- InternVL2-76B, 80 COCO images.
FRACTIONS = {
    "image_share_high_layers": (0, 5),        # image share is high in the first layers
    "image_share_mid_rise_layers": (20, 40),  # moderate rise in the middle layers
    "query_token_share_max": 0.05,            # query tokens are < 5% of all tokens ...
    "query_attention_share_min": 0.60,        # ... yet take > 60% of the attention
    "source": "Sec. 4 and Fig. 1 (InternVL2-76B); Fig. A5 for LLaVA-1.5",
}

# E2: knockout F1 against the unmodified description (Sec. 4.3-4.4, Fig. 2e/2f, Fig. 5).
KNOCKOUT_F1_ALL_LAYERS = {
    "InternVL2-76B": {"img->gen": 0.40, "img->query": 0.0, "img->query+gen": 0.0},
    "LLaVA-1.5-7B": {"img->gen": 0.45},  # approx, Fig. 5 / App. D
}
KNOCKOUT_WINDOW = {
    "InternVL2-76B": {"window": (20, 40), "f1_range": (0.75, 0.81)},  # Sec. 4.4, all three configs
    "LLaVA-1.5-7B": {"window": (4, 20)},                               # App. D
}
KNOCKOUT_FROM_LAYER = {
    "InternVL2-76B": {"no_effect_after": 40, "sharp_rise_between": (20, 40), "ceiling_f1": 0.8},
}
#: the middle-layer window the paper keeps open in its "outside" knockouts, by hub id
#: (Sec. 4.4 for InternVL2-76B; App. D for LLaVA-1.5-7B)
PAPER_WINDOWS = {hub: KNOCKOUT_WINDOW[name]["window"] for name, hubs in HUB_IDS.items() for hub in hubs}

# E3: the judge's user study (App. B).
USER_STUDY = {
    "images": 20, "objects": 316, "ratings": 1464,
    "llm_yes_human_yes": 798, "llm_yes_human_no": 18, "llm_no_human_yes": 40, "llm_no_human_no": 502,
    "tpr": 0.952, "tnr": 0.965, "accuracy": 0.957, "inter_human_agreement": 0.922,
}

# E4: localisation of fine details (Sec. 4.5, Fig. 7, Fig. A6).
LOCALIZATION = {
    "InternVL2-76B": {"peak_accuracy": 0.73, "mid_layers": (20, 40), "details": 231, "images": 68,
                      "layer_window": 10, "token_px": 40},
    "LLaVA-1.5-7B": {"mid_layers": (16, 24), "details": 115, "images": 57, "layer_window": 4},
}

# E5: image-token redundancy (Sec. 5, Fig. 9, A7).
PRUNING = {
    "InternVL2-76B": {"plateau_k": 0.05, "tokens_at_5pct": 80},
    # App. (Fig. A7): "5% ... maps to only 13 tokens" of LLaVA-1.5's 256 as the paper counts them
    "LLaVA-1.5-7B": {"tokens_at_5pct": 13, "image_tokens": 256, "f1_above": 0.8,
                     "note": "saturates more slowly than InternVL2"},
}

# E6: image re-prompting on MME, InternVL2-76B (Table 1). (ACC, ACC+) per subset.
MME_SUBSETS = ["existence", "count", "position", "color", "OCR", "posters",
               "celebrity", "artwork", "scene", "landmark"]
MME_TABLE1 = {
    "Naive": {
        "acc": [98.33, 81.67, 80.00, 86.67, 67.50, 90.13, 83.23, 86.93, 83.50, 90.35],
        "acc_plus": [96.77, 63.33, 60.00, 76.67, 35.00, 84.35, 66.47, 75.37, 67.50, 80.70],
        "average": (84.83, 70.60), "tokens": 1695},
    "Describe-to-LLM": {
        "acc": [90.00, 75.00, 66.67, 86.67, 77.50, 86.05, 35.88, 68.75, 78.50, 67.10],
        "acc_plus": [80.00, 73.33, 46.67, 80.00, 55.00, 80.27, 4.11, 44.50, 59.00, 38.59],
        "average": (73.21, 56.14), "tokens": 172},
    "Query + K=5%": {
        "acc": [91.66, 85.00, 68.33, 80.00, 77.50, 87.55, 79.41, 84.67, 83.00, 78.94],
        "acc_plus": [83.33, 70.00, 40.00, 60.00, 55.00, 78.23, 58.83, 71.85, 67.50, 60.52],
        "average": (81.46, 64.52), "tokens": 201},
    "Query + K=2%": {
        "acc": [85.00, 78.33, 68.33, 70.00, 72.50, 82.39, 77.94, 83.50, 80.25, 71.92],
        "acc_plus": [76.67, 60.00, 40.00, 40.00, 45.00, 65.49, 56.47, 69.50, 61.50, 49.12],
        "average": (77.16, 55.94), "tokens": 151},
    "Query only": {
        "acc": [56.67, 46.67, 53.33, 46.67, 55.00, 71.08, 70.00, 72.50, 73.50, 64.91],
        "acc_plus": [13.33, 13.33, 16.67, 3.33, 15.00, 48.29, 41.76, 49.50, 50.00, 33.33],
        "average": (61.03, 28.45), "tokens": 60},
    "K=2% only": {
        "acc": [65.00, 56.67, 56.67, 50.00, 52.50, 64.28, 52.05, 78.00, 80.50, 68.42],
        "acc_plus": [30.00, 30.00, 30.00, 10.00, 10.00, 33.33, 10.00, 61.00, 62.00, 42.10],
        "average": (62.40, 31.84), "tokens": 91},
}


def mme_table1_frame():
    """Table 1 of the paper as a tidy DataFrame (method, subset, acc, acc_plus, tokens)."""
    import pandas as pd

    rows = []
    for method, entry in MME_TABLE1.items():
        for subset, acc, acc_plus in zip(MME_SUBSETS, entry["acc"], entry["acc_plus"]):
            rows.append({"method": method, "subset": subset, "acc": acc, "acc_plus": acc_plus,
                         "tokens": entry["tokens"]})
    return pd.DataFrame(rows)


# Table 1's compressed-context rows (Sec. 5): "Query + K" for these fractions, and "K only".
TABLE1_KS = (0.05, 0.02)
TABLE1_ONLY_K = 0.02


def model_for(name: str) -> str | None:
    """The paper's name of a model given by one of its hub ids or by the paper's name, else None."""
    for paper_name, hubs in HUB_IDS.items():
        if name == paper_name or name in hubs:
            return paper_name
    return None


def scale_layers(layers: tuple[int, int], n_layers: int, depth: int = DEPTH) -> tuple[int, int]:
    """Layers the paper names (of ``depth``), at the same relative depth in a model of
    ``n_layers`` layers, rounded: ``scale_layers((20, 40), 32) == (8, 16)``."""
    return tuple(int(round(n_layers * layer / depth)) for layer in layers)


def rise_layers(n_layers: int) -> tuple[int, int]:
    """Where F1 rises sharply when the knockout starts at layer l, scaled to ``n_layers``: between
    layers 20 and 40 of 80 in the paper (Sec. 4.3, Fig. 2f)."""
    return scale_layers(KNOCKOUT_FROM_LAYER["InternVL2-76B"]["sharp_rise_between"], n_layers)
