"""DeepCTR-Torch DIEN (deepctr_torch.models.DIEN, AUGRU, no negative sampling: the shared loop has no auxiliary loss),
driven by the shared torch loop.

Input format is DeepCTR-Torch's own: one float tensor X [B, n_cols] with columns laid out by
build_input_features (user, item_id, cate_id, hist_item_id[100], seq_length, hist_cate_id[100]).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))
import dinbench as db

args = db.parse_args()
db.set_threads_env(args.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import deepctr_torch  # noqa: E402
from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat, build_input_features  # noqa: E402
from deepctr_torch.models import DIEN  # noqa: E402
import torch_harness  # noqa: E402

C = db.CFG
feature_columns = [
    SparseFeat("user", C["n_users"], embedding_dim=C["user_dim"]),
    SparseFeat("item_id", C["n_items"], embedding_dim=C["item_dim"]),
    SparseFeat("cate_id", C["n_cats"], embedding_dim=C["cat_dim"]),
    VarLenSparseFeat(SparseFeat("hist_item_id", C["n_items"], embedding_dim=C["item_dim"], embedding_name="item_id"),
                     maxlen=C["max_len"], length_name="seq_length"),
    VarLenSparseFeat(SparseFeat("hist_cate_id", C["n_cats"], embedding_dim=C["cat_dim"], embedding_name="cate_id"),
                     maxlen=C["max_len"], length_name="seq_length"),
]
behavior_feature_list = ["item_id", "cate_id"]
feat_index = build_input_features(feature_columns)
ncols = max(e for _, e in feat_index.values())


def to_input(b):
    cols = dict(user=b["user"], item_id=b["item"], cate_id=b["cat"], hist_item_id=b["hist_item"],
                hist_cate_id=b["hist_cat"], seq_length=b["length"])
    X = np.zeros((len(b["label"]), ncols), np.float32)
    for name, (s, e) in feat_index.items():
        v = cols[name]
        X[:, s:e] = v.reshape(len(v), -1)
    return torch.from_numpy(X)


def build_model():
    m = DIEN(feature_columns, behavior_feature_list, gru_type="AUGRU", use_negsampling=False, use_bn=False,
             dnn_hidden_units=C["dnn_hidden"], dnn_activation="prelu",
             att_hidden_units=C["att_hidden"], att_activation="sigmoid", att_weight_normalization=True,
             l2_reg_dnn=0.0, l2_reg_embedding=0.0, dnn_dropout=0.0, device="cpu", seed=1024)
    return m


torch_harness.run(args, "DeepCTR-Torch DIEN", dict(deepctr_torch=deepctr_torch.__version__), build_model, to_input,
                  extra=dict(emb="user32 item32 cat32 (query 64)",
                             att="AUGRU over GRU states, attention 80-40 sigmoid, softmax",
                             dnn="160-200-80-1 PReLU (final linear no bias + PredictionLayer bias)",
                             input_format="single float32 X[B,204] sliced & .long() in forward"))
