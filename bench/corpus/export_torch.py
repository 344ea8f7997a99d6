"""Exports real architectures with random weights to ONNX, with both torch exporters.

Runs inside the torch venv that `bench/corpus/build.py` creates (torch, torchvision, transformers,
onnxscript); it needs nothing from trtcheck. No weights are downloaded: torchvision models are
built with `weights=None` and transformers models with `AutoModel.from_config(Config(...))`.
Every model is built under a fixed seed, so two runs write the same files.

    python export_torch.py --out DIR [--tiny] [--only NAME ...] [--force] [--list]

For each model and exporter it writes `DIR/<name>.onnx` (and, for the external-data model,
`DIR/<name>.onnx.data`) plus `DIR/<name>.json`, the manifest fields that only the export knows
(source, exporter, input shapes and value ranges, notes). Each file is written under a temporary
name and renamed. A model whose .onnx and .json both exist is skipped unless --force is given.
A failed export writes `DIR/<name>.error.json` instead and the script goes on; the exit code is 1
if any export failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

SEED = 0
CLASSIC_OPSET = 17
DYNAMO_OPSET = 18


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Built:
    """A module ready to export, with example inputs and what the manifest records about them."""

    module: nn.Module
    args: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: dim name}
    input_shapes: dict[str, list[int]]  # concrete shapes for the manifest (the check run uses them)
    val_ranges: dict[str, list[float]]
    source: str
    notes: str = ""
    # Bounds for dynamo's symbolic dims (dim name -> (min, max)); unnamed ones are unbounded.
    dim_bounds: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Spec:
    name: str  # the base name; files are <name>_<exporter>.onnx
    family: str  # "torchvision" | "transformers"
    build: Callable[[bool], Built]  # build(tiny)
    exporters: tuple[str, ...] = ("classic", "dynamo")
    # Models also saved with external data: exporter -> suffix of the extra model's name.
    external: tuple[str, ...] = ()
    # Dynamo exports also written without the onnxscript optimizer (it folds CastLike away).
    noopt: bool = False
    tiny: bool = True  # also part of the tiny zoo
    full: bool = True  # also part of the full corpus


IMAGE_RANGE = [-1.0, 1.0]
UNIT_RANGE = [0.0, 1.0]


def _image_input(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1


# ---------------------------------------------------------------- torchvision classifiers


def _classifier(module: nn.Module, size: int, source: str, notes: str = "") -> Built:
    module.eval()
    return Built(
        module=module,
        args=(_image_input(2, size),),
        input_names=["image"],
        output_names=["logits"],
        dynamic={"image": {0: "batch"}},
        input_shapes={"image": [1, 3, size, size]},
        val_ranges={"image": IMAGE_RANGE},
        source=source,
        notes=notes,
    )


def build_resnet18(tiny: bool) -> Built:
    import torchvision

    if tiny:
        # torchvision's ResNet has fixed widths (64..512): even one block per stage is 4.9M
        # parameters, so the tiny zoo has no ResNet (it keeps MobileNetV3 and EfficientNet).
        raise ValueError("no tiny resnet18")
    return _classifier(torchvision.models.resnet18(weights=None), 224,
                       "torchvision.models.resnet18(weights=None)")


def build_mobilenet_v3_small(tiny: bool) -> Built:
    import torchvision

    if tiny:
        module = torchvision.models.mobilenet_v3_small(weights=None, width_mult=0.25,
                                                       num_classes=16)
        return _classifier(module, 64,
                           "torchvision.models.mobilenet_v3_small(weights=None, width_mult=0.25, "
                           "num_classes=16)", "HardSwish, HardSigmoid squeeze-excitation")
    return _classifier(torchvision.models.mobilenet_v3_small(weights=None), 224,
                       "torchvision.models.mobilenet_v3_small(weights=None)",
                       "HardSwish, HardSigmoid squeeze-excitation")


def build_efficientnet_b0(tiny: bool) -> Built:
    import torchvision
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    if tiny:
        setting, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=0.25,
                                                   depth_mult=0.34)
        module = EfficientNet(setting, dropout=0.2, num_classes=16, last_channel=last_channel)
        return _classifier(module, 64,
                           "torchvision.models.efficientnet.EfficientNet(efficientnet_b0 setting, "
                           "width_mult=0.25, depth_mult=0.34, num_classes=16)",
                           "SiLU, Sigmoid squeeze-excitation")
    return _classifier(torchvision.models.efficientnet_b0(weights=None), 224,
                       "torchvision.models.efficientnet_b0(weights=None)",
                       "SiLU, Sigmoid squeeze-excitation")


def build_vit_b_16(tiny: bool) -> Built:
    import torchvision
    from torchvision.models.vision_transformer import VisionTransformer

    if tiny:
        module = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                   hidden_dim=32, mlp_dim=64, num_classes=16)
        size = 32
        source = ("torchvision.models.vision_transformer.VisionTransformer(image_size=32, "
                  "patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, "
                  "num_classes=16)")
    else:
        module = torchvision.models.vit_b_16(weights=None)
        size = 224
        source = "torchvision.models.vit_b_16(weights=None)"
    # torchvision zero-initialises the classification head: the logits would all be 0.
    head = module.heads.head
    nn.init.normal_(head.weight, std=0.02)
    nn.init.normal_(head.bias, std=0.02)
    return _classifier(module, size, source,
                       "classification head re-initialised (torchvision zero-initialises it); "
                       "the classic exporter needs "
                       "torch.backends.mha.set_fastpath_enabled(False)")


# ---------------------------------------------------------------- torchvision detectors


class Detector(nn.Module):
    """Takes a [1,3,H,W] batch tensor and returns boxes, scores and labels as plain tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def _detector(model: nn.Module, size: int, source: str, notes: str) -> Built:
    model.eval()
    return Built(
        module=Detector(model),
        args=(torch.rand(1, 3, size, size),),
        input_names=["image"],
        output_names=["boxes", "scores", "labels"],
        dynamic={},
        input_shapes={"image": [1, 3, size, size]},
        val_ranges={"image": UNIT_RANGE},
        source=source,
        notes=notes,
    )


def build_ssdlite(tiny: bool) -> Built:
    from functools import partial

    import torchvision

    if not tiny:
        # Defaults already keep scores >= 0.001; with random weights a softmax over 91 classes
        # gives about 0.011, so detections come out.
        model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, score_thresh=0.001)
        return _detector(model, 320,
                         "torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, "
                         "weights_backbone=None, score_thresh=0.001)",
                         "image resized to 320x320 inside the graph (Resize); TopK, "
                         "NonMaxSuppression; outputs have a data-dependent number of detections")
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import (
        SSDLiteFeatureExtractorMobileNet,
        SSDLiteHead,
        _normal_init,
    )

    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.25,
                                                     reduced_tail=True, norm_layer=norm_layer)
    _normal_init(backbone)
    features = backbone.features
    stage_indices = ([0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
                     + [len(features) - 1])
    extractor = SSDLiteFeatureExtractorMobileNet(features, stage_indices[-2], norm_layer,
                                                 width_mult=0.25)
    size = (96, 96)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(extractor, size)
    model = SSD(extractor, anchors, size, 8,
                head=SSDLiteHead(out_channels, anchors.num_anchors_per_location(), 8, norm_layer),
                score_thresh=0.001, nms_thresh=0.55, detections_per_img=50, topk_candidates=50,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return _detector(model, 128,
                     "torchvision SSD + SSDLiteHead on mobilenet_v3_large(width_mult=0.25, "
                     "reduced_tail=True), size 96x96, 8 classes, score_thresh=0.001",
                     "128x128 input resized to 96x96 inside the graph (Resize); TopK, "
                     "NonMaxSuppression; data-dependent number of detections")


def build_fasterrcnn(tiny: bool) -> Built:
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if not tiny:
        model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, box_score_thresh=0.001)
        return _detector(model, 320,
                         "torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn("
                         "weights=None, weights_backbone=None, box_score_thresh=0.001)",
                         "GeneralizedRCNNTransform resize (Resize), RPN TopK + NMS, RoIAlign, "
                         "per-class NMS; data-dependent number of detections")
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.25,
                                                      reduced_tail=True)
    features = mobilenet.features
    stage_indices = ([0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
                     + [len(features) - 1])
    returned = [len(stage_indices) - 2, len(stage_indices) - 1]
    backbone = BackboneWithFPN(
        features, {f"{stage_indices[k]}": str(v) for v, k in enumerate(returned)},
        [features[stage_indices[i]].out_channels for i in returned], 16,
        extra_blocks=LastLevelMaxPool())
    anchor_sizes = ((16, 32, 64),) * 3
    model = FasterRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * 3),
        box_head=TwoMLPHead(16 * 7 * 7, 32), box_predictor=FastRCNNPredictor(32, 8),
        min_size=96, max_size=96, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
        box_score_thresh=0.001, box_detections_per_img=50)
    return _detector(model, 128,
                     "torchvision FasterRCNN on mobilenet_v3_large(width_mult=0.25) + FPN(16 "
                     "channels), TwoMLPHead(784, 32), 8 classes, min_size=max_size=96, "
                     "box_score_thresh=0.001",
                     "128x128 input resized to 96x96 inside the graph (Resize); RPN TopK + NMS, "
                     "RoIAlign, per-class NMS; data-dependent number of detections")


class MaskDetector(Detector):
    def forward(self, image: torch.Tensor):
        out = self.model([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"], out["masks"]


def build_maskrcnn(tiny: bool) -> Built:
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if tiny:
        mobilenet = torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.25,
                                                          reduced_tail=True)
        features = mobilenet.features
        stage_indices = ([0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
                         + [len(features) - 1])
        returned = [len(stage_indices) - 2, len(stage_indices) - 1]
        backbone = BackboneWithFPN(
            features, {f"{stage_indices[k]}": str(v) for v, k in enumerate(returned)},
            [features[stage_indices[i]].out_channels for i in returned], 16,
            extra_blocks=LastLevelMaxPool())
        model = MaskRCNN(
            backbone, num_classes=None,
            rpn_anchor_generator=AnchorGenerator(((16, 32, 64),) * 3, ((0.5, 1.0, 2.0),) * 3),
            box_head=TwoMLPHead(16 * 7 * 7, 32), box_predictor=FastRCNNPredictor(32, 8),
            mask_head=MaskRCNNHeads(16, (16, 16), 1),
            mask_predictor=MaskRCNNPredictor(16, 16, 8),
            min_size=96, max_size=96, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
            box_score_thresh=0.001, box_detections_per_img=20)
        size = 128
        source = ("torchvision MaskRCNN on mobilenet_v3_large(width_mult=0.25) + FPN(16 "
                  "channels), TwoMLPHead(784, 32), MaskRCNNHeads(16, (16, 16)), 8 classes, "
                  "min_size=max_size=96, box_score_thresh=0.001, box_detections_per_img=20")
        notes = "128x128 input resized to 96x96 inside the graph"
    else:
        model = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=320, max_size=320,
            box_score_thresh=0.001, box_detections_per_img=50)
        size = 320
        source = ("torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, "
                  "weights_backbone=None, min_size=320, max_size=320, box_score_thresh=0.001, "
                  "box_detections_per_img=50)")
        notes = "320x320 input"
    built = _detector(model, size, source,
                      notes + " (Resize); RPN TopK + NMS, RoIAlign, per-class NMS; the mask "
                      "pasting is a scripted loop, exported as a Loop node; data-dependent "
                      "number of detections")
    built.module = MaskDetector(model)
    built.output_names = ["boxes", "scores", "labels", "masks"]
    return built


# ---------------------------------------------------------------- transformers


class Keywords(nn.Module):
    """Calls a transformers model with keyword arguments only and returns plain tensors.

    transformers 5 models called with several positional arguments mix them up. The forward
    takes named parameters (not *args) so that dynamo's dynamic shapes map one to one.
    """

    def __init__(self, model: nn.Module, input_names: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.outputs = outputs

    def call(self, *args: torch.Tensor):
        out = self.model(**dict(zip(self.input_names, args, strict=True)), return_dict=True)
        return tuple(out[name] for name in self.outputs)


class Keywords1(Keywords):
    def forward(self, first: torch.Tensor):
        return self.call(first)


class Keywords2(Keywords):
    def forward(self, first: torch.Tensor, second: torch.Tensor):
        return self.call(first, second)


def _text(model: nn.Module, vocab: int, seq: int, source: str, outputs: list[str],
          max_positions: int, notes: str) -> Built:
    model.eval()
    names = ["input_ids", "attention_mask"]
    ids = torch.randint(0, vocab, (2, seq))
    mask = torch.ones(2, seq, dtype=torch.int64)
    mask[1, seq // 2:] = 0  # a padded second sequence, so the mask matters in the trace
    return Built(
        module=Keywords2(model, names, outputs),
        args=(ids, mask),
        input_names=names,
        output_names=outputs,
        dynamic={"input_ids": {0: "batch", 1: "sequence"},
                 "attention_mask": {0: "batch", 1: "sequence"}},
        input_shapes={"input_ids": [1, min(128, max_positions)],
                      "attention_mask": [1, min(128, max_positions)]},
        val_ranges={"input_ids": [0, vocab - 1], "attention_mask": [1, 1]},
        source=source,
        notes=notes + "; integer ranges are inclusive (Polygraphy's convention)",
        dim_bounds={"sequence": (2, max_positions)},
    )


def build_bert(tiny: bool) -> Built:
    from transformers import AutoModel, BertConfig

    if tiny:
        config = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=64)
        desc = ("BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, "
                "num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)")
    else:
        config = BertConfig()  # bert-base-uncased sizes: 12 layers, 768 hidden, vocab 30522
        desc = "BertConfig() (bert-base: 12 layers, hidden 768, vocab 30522)"
    model = AutoModel.from_config(config)
    return _text(model, config.vocab_size, 16, f"transformers.AutoModel.from_config({desc})",
                 ["last_hidden_state", "pooler_output"], config.max_position_embeddings,
                 "dynamic batch and sequence; padding mask turned into an additive "
                 "large-negative bias")


def build_gpt2(tiny: bool) -> Built:
    from transformers import AutoModel, GPT2Config

    if tiny:
        config = GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                            bos_token_id=0, eos_token_id=0, use_cache=False)
        desc = "GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=2, n_positions=64)"
    else:
        config = GPT2Config(use_cache=False)  # gpt2 (small): 12 layers, 768 wide, vocab 50257
        desc = "GPT2Config() (gpt2 small: 12 layers, n_embd 768, vocab 50257)"
    model = AutoModel.from_config(config)
    return _text(model, config.vocab_size, 16, f"transformers.AutoModel.from_config({desc})",
                 ["last_hidden_state"], config.n_positions,
                 "dynamic batch and sequence; causal mask combined with the padding mask, "
                 "no KV cache")


def build_whisper_encoder(tiny: bool) -> Built:
    from transformers import AutoModel, WhisperConfig

    if tiny:
        config = WhisperConfig(vocab_size=128, d_model=32, encoder_layers=2,
                               encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                               decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16,
                               max_source_positions=50, max_target_positions=16,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               decoder_start_token_id=3)
        desc = ("WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, "
                "encoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50)")
    else:
        config = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8,
                               encoder_ffn_dim=2048, decoder_layers=6,
                               decoder_attention_heads=8, decoder_ffn_dim=2048)
        desc = ("WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, "
                "encoder_ffn_dim=2048) (whisper-base sizes)")
    encoder = AutoModel.from_config(config).get_encoder().eval()
    frames = 2 * config.max_source_positions  # the encoder insists on exactly this many frames
    features = torch.rand(2, config.num_mel_bins, frames) * 2 - 1
    return Built(
        module=Keywords1(encoder, ["input_features"], ["last_hidden_state"]),
        args=(features,),
        input_names=["input_features"],
        output_names=["last_hidden_state"],
        dynamic={"input_features": {0: "batch"}},
        input_shapes={"input_features": [1, config.num_mel_bins, frames]},
        val_ranges={"input_features": [-1.0, 1.0]},
        source=f"transformers.AutoModel.from_config({desc}).get_encoder()",
        notes="log-mel input (Whisper normalises it to about [-1, 1]); two Conv1d + GELU front "
              "end, then a transformer encoder",
    )


def build_wav2vec2(tiny: bool) -> Built:
    from transformers import AutoModel, Wav2Vec2Config

    if tiny:
        config = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64,
                                conv_dim=(16, 16, 16), conv_stride=(5, 2, 2),
                                conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                                num_conv_pos_embedding_groups=2, do_stable_layer_norm=False)
        desc = ("Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, "
                "intermediate_size=64, conv_dim=(16,16,16), conv_stride=(5,2,2), "
                "conv_kernel=(10,3,3), num_conv_pos_embeddings=16)")
        samples = 1600
    else:
        config = Wav2Vec2Config()  # wav2vec2-base sizes
        desc = "Wav2Vec2Config() (wav2vec2-base: 12 layers, hidden 768, 7 conv layers)"
        samples = 16000
    model = AutoModel.from_config(config).eval()
    audio = torch.rand(2, samples) * 2 - 1
    return Built(
        module=Keywords1(model, ["input_values"], ["last_hidden_state"]),
        args=(audio,),
        input_names=["input_values"],
        output_names=["last_hidden_state"],
        dynamic={"input_values": {0: "batch", 1: "samples"}},
        input_shapes={"input_values": [1, samples]},
        val_ranges={"input_values": [-1.0, 1.0]},
        source=f"transformers.AutoModel.from_config({desc})",
        notes="raw 16 kHz waveform; Conv1d feature encoder with GroupNorm, convolutional "
              "positional embedding, transformer encoder",
        dim_bounds={"samples": (400 if tiny else 4000, 160000)},
    )


SPECS: list[Spec] = [
    Spec("resnet18", "torchvision", build_resnet18, tiny=False),
    Spec("mobilenet_v3_small", "torchvision", build_mobilenet_v3_small),
    Spec("efficientnet_b0", "torchvision", build_efficientnet_b0, tiny=False),
    Spec("vit_b_16", "torchvision", build_vit_b_16),
    Spec("bert_base", "transformers", build_bert, external=("classic",), noopt=True),
    Spec("gpt2", "transformers", build_gpt2),
    Spec("whisper_base_encoder", "transformers", build_whisper_encoder),
    Spec("wav2vec2_base", "transformers", build_wav2vec2, tiny=False),
    # The detectors' outputs have data-dependent sizes: torch.export refuses them (guards on
    # unbacked symbols), so only the classic exporter is used.
    Spec("ssdlite320", "torchvision", build_ssdlite, exporters=("classic",)),
    Spec("fasterrcnn_mnv3_320", "torchvision", build_fasterrcnn, exporters=("classic",),
         tiny=False),
    Spec("maskrcnn_r50", "torchvision", build_maskrcnn, exporters=("classic",)),
]

TINY_NAMES = {
    "mobilenet_v3_small": "mobilenet_v3_tiny",
    "efficientnet_b0": "efficientnet_tiny",
    "vit_b_16": "vit_tiny",
    "bert_base": "bert_tiny",
    "gpt2": "gpt2_tiny",
    "whisper_base_encoder": "whisper_encoder_tiny",
    "wav2vec2_base": "wav2vec2_tiny",
    "ssdlite320": "ssdlite_tiny",
    "fasterrcnn_mnv3_320": "fasterrcnn_tiny",
    "maskrcnn_r50": "maskrcnn_tiny",
}


def planned(tiny: bool) -> list[tuple[Spec, str, str, str]]:
    """(spec, exporter, output name, variant) for every model this mode exports.

    variant: "" (plain), "extdata" (saved with external data) or "noopt" (dynamo without the
    onnxscript optimizer).
    """
    out = []
    for spec in SPECS:
        if not (spec.tiny if tiny else spec.full):
            continue
        base = TINY_NAMES[spec.name] if tiny else spec.name
        for exporter in spec.exporters:
            out.append((spec, exporter, f"{base}_{exporter}", ""))
        if spec.noopt:
            out.append((spec, "dynamo", f"{base}_dynamo_noopt", "noopt"))
        for exporter in spec.external:
            out.append((spec, exporter, f"{base}_{exporter}_extdata", "extdata"))
    return out


# ---------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_classic(built: Built, path: Path) -> None:
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.onnx.export(
            built.module, built.args, str(path), dynamo=False, opset_version=CLASSIC_OPSET,
            input_names=built.input_names, output_names=built.output_names,
            dynamic_axes=built.dynamic or None,
            do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def _export_dynamo(built: Built, path: Path, optimize: bool = True) -> None:
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for name in built.input_names:
        axes = built.dynamic.get(name)
        if not axes:
            shapes[name] = None
            continue
        spec = {}
        for axis, dim_name in axes.items():
            if dim_name not in dims:
                lo, hi = built.dim_bounds.get(dim_name, (1, 1 << 16))
                dims[dim_name] = Dim(dim_name, min=lo, max=hi)
            spec[axis] = dims[dim_name]
        shapes[name] = spec
    # Keyed by the wrapper's positional parameter: one tuple entry per argument.
    dynamic_shapes = tuple(shapes[name] for name in built.input_names)
    program = torch.onnx.export(
        built.module, built.args, dynamo=True, opset_version=DYNAMO_OPSET,
        input_names=built.input_names, output_names=built.output_names,
        dynamic_shapes=dynamic_shapes if any(v is not None for v in dynamic_shapes) else None,
        optimize=optimize, verbose=False)
    assert program is not None
    program.save(str(path), external_data=False)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _strip_stack_traces(model: onnx.ModelProto) -> int:
    """Drops the dynamo exporter's per-node stack traces (they hold this machine's paths)."""
    dropped = 0

    def walk(graph: onnx.GraphProto) -> None:
        nonlocal dropped
        for node in graph.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            if len(keep) != len(node.metadata_props):
                dropped += 1
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return dropped


def export_one(spec: Spec, exporter: str, name: str, variant: str, tiny: bool,
               out: Path) -> dict[str, Any]:
    seed_everything()
    with torch.no_grad():
        built = spec.build(tiny)
    tmp_dir = out / f".{name}.partial"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for stale in tmp_dir.iterdir():
        stale.unlink()
    tmp = tmp_dir / f"{name}.onnx"
    started = time.perf_counter()
    with _quiet(), torch.no_grad():
        if exporter == "classic":
            _export_classic(built, tmp)
        else:
            _export_dynamo(built, tmp, optimize=variant != "noopt")
    seconds = time.perf_counter() - started
    model = onnx.load(str(tmp))
    notes = built.notes
    if variant == "noopt":
        notes += "; dynamo export with optimize=False (CastLike and Constant nodes kept)"
    external = variant == "extdata"
    if _strip_stack_traces(model) or external:
        # All weights of 1 KB and more in one file beside the model, named <model>.onnx.data.
        for stale in tmp_dir.iterdir():
            stale.unlink()
        if external:
            onnx.save_model(model, str(tmp), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=f"{name}.onnx.data",
                            size_threshold=1024, convert_attribute=False)
            notes += f"; weights in external data file {name}.onnx.data beside the model"
        else:
            onnx.save_model(model, str(tmp))
    # Move the data file first, so that a model file never exists without its data.
    for extra in sorted(tmp_dir.iterdir()):
        if extra.name != tmp.name:
            extra.chmod(0o644)  # onnx writes external data owner-only
            os.replace(extra, out / extra.name)
    os.replace(tmp, out / f"{name}.onnx")
    tmp_dir.rmdir()
    meta = {
        "name": name,
        "family": spec.family,
        "source": built.source,
        "exporter": exporter,
        "input_shapes": built.input_shapes,
        "val_ranges": built.val_ranges,
        "external_data": external,
        "notes": notes,
        "torch": torch.__version__.split("+")[0],
        "export_seconds": round(seconds, 1),
    }
    _atomic_write_text(out / f"{name}.json", json.dumps(meta, indent=1) + "\n")
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny configs (the committed zoo)")
    parser.add_argument("--only", nargs="*", default=None, help="output names to export")
    parser.add_argument("--force", action="store_true", help="re-export existing models")
    parser.add_argument("--list", action="store_true", help="print the output names and exit")
    args = parser.parse_args()
    plan = planned(args.tiny)
    if args.list:
        for _, _, name, _ in plan:
            print(name)
        return 0
    if args.only:
        unknown = set(args.only) - {name for _, _, name, _ in plan}
        if unknown:
            parser.error(f"unknown model(s): {sorted(unknown)}")
        plan = [p for p in plan if p[2] in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    failed = 0
    for spec, exporter, name, variant in plan:
        done = (args.out / f"{name}.onnx").exists() and (args.out / f"{name}.json").exists()
        if done and not args.force:
            print(f"[export] {name}: already built", flush=True)
            continue
        error_file = args.out / f"{name}.error.json"
        started = time.perf_counter()
        try:
            export_one(spec, exporter, name, variant, args.tiny, args.out)
        except Exception as exc:  # one failed export must not stop the others
            failed += 1
            partial = args.out / f".{name}.partial"
            if partial.exists():
                for stale in partial.iterdir():
                    stale.unlink()
                partial.rmdir()
            message = f"{type(exc).__name__}: {exc}"
            print(f"[export] {name}: FAILED {message[:400]}", flush=True)
            _atomic_write_text(error_file, json.dumps(
                {"name": name, "error": message[:4000],
                 "traceback": traceback.format_exc()[-8000:]}, indent=1) + "\n")
            continue
        if error_file.exists():
            error_file.unlink()
        print(f"[export] {name}: ok in {time.perf_counter() - started:.0f}s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
