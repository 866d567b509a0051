"""Model builders for the structural-engine coverage zoo.

Every entry builds a randomly initialised model (no downloads), small example inputs, and the FQNs of the
output heads whose outputs must keep their size (``ignore``). Families: every torchvision classification,
segmentation and detection model; the smallest timm model of every timm family; Hugging Face transformers
from tiny configs; ultralytics YOLO detectors built from their yaml files (test-only dependency).

The pass criterion shared by ``benchmarks/zoo_coverage.py`` and ``tests/zoo`` lives here too
(:func:`run_case`), so both exercise exactly the same code path.

Example:
    >>> from benchmarks.zoo import get
    >>> case = get("tv:resnet18")
    >>> case.family
    'torchvision-cls'
"""
from __future__ import annotations

import dataclasses
import gc
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

NUM_CLASSES = 10  # small, distinctive head width: also how the generic head finder spots classifiers
MIN_PARAM_DROP = 0.20  # pass criterion: parameters drop by at least this fraction at sparsity 0.5
SPARSITY = 0.5


@dataclass
class Built:
    model: nn.Module
    inputs: tuple | dict  # positional args (a tuple) or keyword args (a dict) of model(...)
    ignore: list[str]  # FQNs of modules whose outputs keep their size
    out_keys: tuple[str, ...] | None = None  # for dict-like outputs: the entries whose shapes must hold
    dynamic_dim0: bool = False  # detection outputs: the number of boxes is data dependent


@dataclass(frozen=True)
class Case:
    name: str  # "tv:resnet18", "timm:resnet10t", "hf:llama", "yolo:yolov8n"
    family: str  # group for the summary: torchvision-cls, timm:<family>, hf, yolo...
    build: Callable[[], Built] = field(repr=False, compare=False)
    tags: tuple[str, ...] = ()  # "big": many parameters, run last


# ------------------------------------------------------------------ helpers
def _heads_by_width(model: nn.Module, width: int) -> list[str]:
    """FQNs of Linear / conv layers whose output width equals ``width`` (the classifiers)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == width:
            out.append(name)
        elif isinstance(mod, nn.modules.conv._ConvNd) and mod.out_channels == width:
            out.append(name)
    return out


def _heads_by_regex(model: nn.Module, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [n for n, m in model.named_modules() if n and rx.search(n) and _is_leaf_layer(m)]


def _is_leaf_layer(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding))


def _image(size: int | tuple[int, int], batch: int = 1, channels: int = 3) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, channels, h, w)


# ------------------------------------------------------------------ torchvision
TV_IMAGE_SIZE = 64
# models that need more than the default small input
_TV_SIZES = {"inception_v3": 96, "googlenet": 64, "maxvit_t": 224, "alexnet": 64, "vit_h_14": 56}
# vision transformers take the image size as a constructor argument
_TV_KW = {
    "vit_b_16": dict(image_size=64), "vit_b_32": dict(image_size=64), "vit_l_16": dict(image_size=64),
    "vit_l_32": dict(image_size=64), "vit_h_14": dict(image_size=56),
    "inception_v3": dict(aux_logits=False, init_weights=False), "googlenet": dict(aux_logits=False,
                                                                                 init_weights=False),
}
_TV_BIG = {"vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32", "regnet_y_32gf", "regnet_x_32gf",
           "efficientnet_b7", "efficientnet_v2_l", "convnext_large", "swin_v2_b", "swin_b",
           "resnext101_64x4d", "wide_resnet101_2", "regnet_y_16gf", "vgg19_bn", "vgg19", "vgg16", "vgg16_bn",
           "resnext101_32x8d", "efficientnet_b6", "regnet_x_16gf"}


def _tv_cls(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        fn = torchvision.models.get_model_builder(name)
        model = fn(weights=None, num_classes=NUM_CLASSES, **_TV_KW.get(name, {})).eval()
        size = _TV_SIZES.get(name, TV_IMAGE_SIZE)
        return Built(model, (_image(size),), _heads_by_width(model, NUM_CLASSES))

    return build


def _tv_seg(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        fn = torchvision.models.get_model_builder(name)
        model = fn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                   aux_loss=name.startswith(("fcn", "deeplab")) or None).eval()
        return Built(model, (_image(64),), _heads_by_width(model, NUM_CLASSES), out_keys=("out", "aux"))

    return build


_DET_HEADS = (r"(cls_logits|bbox_pred|bbox_reg|bbox_ctrness|cls_score|mask_fcn_logits|kps_score_lowres"
              r"|classification_head\.module_list\.\d+|regression_head\.module_list\.\d+)$")


def _tv_det(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        fn = torchvision.models.get_model_builder(name)
        kw: dict[str, Any] = dict(weights=None, weights_backbone=None, num_classes=3)
        size = 128
        if name.startswith(("ssd300", "ssdlite")):
            size = 320 if name.startswith("ssdlite") else 300
        else:
            kw.update(min_size=size, max_size=size)
        model = fn(**kw).eval()
        heads = _heads_by_regex(model, _DET_HEADS)
        # SSD heads are ModuleLists of Sequential blocks: ignore every conv inside them
        heads += [n for n, m in model.named_modules() if re.search(r"head\.(classification|regression)_head"
                                                                     r"\.module_list\.\d+\.\d+$", n)
                  and isinstance(m, nn.Conv2d) and n not in heads]
        return Built(model, ([torch.rand(3, size, size)],), heads, dynamic_dim0=True)

    return build


def torchvision_cases() -> list[Case]:
    import torchvision.models as tvm

    cases = [Case(f"tv:{n}", "torchvision-cls", _tv_cls(n), ("big",) if n in _TV_BIG else ())
             for n in tvm.list_models(module=tvm)]
    cases += [Case(f"tvseg:{n}", "torchvision-seg", _tv_seg(n)) for n in tvm.list_models(module=tvm.segmentation)]
    cases += [Case(f"tvdet:{n}", "torchvision-det", _tv_det(n)) for n in tvm.list_models(module=tvm.detection)]
    return cases


# ------------------------------------------------------------------ timm
# The smallest model (name, parameter count built on the meta device with num_classes=10) of every timm family,
# as computed by `python benchmarks/zoo.py --refresh-timm` for timm 1.0.31. Families whose every model fails
# to build are absent.
TIMM_SMALLEST: dict[str, tuple[str, int]] = {
    "beit": ("beit_base_patch16_224", 85769674), "byoanet": ("halonet_h1", 7592186),
    "byobnet": ("test_byobnet", 202426), "cait": ("cait_xxs24_224", 11765194), "coat": ("coat_tiny", 5347070),
    "convit": ("convit_tiny", 5519442), "convmixer": ("convmixer_768_32", 20348938),
    "convnext": ("test_convnext", 207778), "cpubone": ("cpubone_nano", 4934710),
    "crossvit": ("crossvit_tiny_240", 6727700), "csatv2": ("csatv2", 10720314),
    "cspnet": ("cs3darknet_focus_s", 2766858), "cspnext": ("cspnext_tiny", 2352550),
    "davit": ("davit_tiny", 27598858), "deepseek_vit": ("deepseek_vit_412m", 411852810),
    "deit": ("deit_tiny_patch16_224", 5526346), "densenet": ("densenet121", 6964106), "dla": ("dla46x_c", 814010),
    "dpn": ("dpn48b", 8301556), "edgenext": ("edgenext_xx_small", 1159906),
    "efficientformer": ("efficientformer_l1", 11400908), "efficientformer_v2": ("efficientformerv2_s0", 3249796),
    "efficientnet": ("test_efficientnet", 101766), "efficientvim": ("efficientvim_m1", 5725098),
    "efficientvit_mit": ("efficientvit_b0", 2141818), "efficientvit_msra": ("efficientvit_m0", 2158366),
    "eva": ("vit_tiny_patch16_dinov3_qkvb", 5491594), "fasternet": ("fasternet_t0", 2637310),
    "fastvit": ("fastvit_t8", 3264922), "focalnet": ("focalnet_tiny_srf", 27665806),
    "gcvit": ("gcvit_xxtiny", 11487558), "gemma4_vit": ("gemma4_vit_167m_enc", 167364608),
    "ghostnet": ("ghostnet_050", 1319102), "hardcorenas": ("hardcorenas_b", 3908354),
    "hgnet": ("hgnetv2_b0", 3968040), "hiera": ("hiera_tiny_224", 27148906),
    "hieradet_sam2": ("sam2_hiera_tiny", 26858698), "hrnet": ("hrnet_w18_small", 11158954),
    "iformer": ("iformer_t", 2632026), "inception_next": ("inception_next_atto", 3205130),
    "inception_resnet_v2": ("inception_resnet_v2", 54321834), "inception_v3": ("inception_v3", 21806058),
    "inception_v4": ("inception_v4", 41158186), "lcnetv2": ("lcnetv2_small", 2860362),
    "levit": ("levit_128s", 7014758), "lowformer": ("lowformer_b0", 12515482), "mambaout": ("test_mambaout", 193130),
    "maxxvit": ("test_coatnet", 447770), "metaformer": ("poolformerv2_s12", 11383842),
    "mlp_mixer": ("gmlp_ti16_224", 5739618), "mobilenetv3": ("lcnet_035", 376180),
    "mobilenetv5": ("mobilenetv5_base", 80619466), "mobilevit": ("mobilevit_xxs", 954234),
    "mvitv2": ("mvitv2_tiny", 23412010), "naflexvit": ("naflexvit_base_patch16_parfac_gap", 85700362),
    "nasnet": ("nasnetalarge", 84760480), "nest": ("nest_tiny", 16676458), "nextvit": ("nextvit_small", 30748618),
    "nfnet": ("test_nfnet", 192010), "pit": ("pit_ti_224", 4592842), "pnasnet": ("pnasnet5large", 81779878),
    "pvt_v2": ("pvt_v2_b0", 3412330), "qwen3_vit": ("qwen3_vit_88m", 87422218), "rdnet": ("rdnet_tiny", 22832418),
    "regnet": ("regnetx_002", 2319482), "repghost": ("repghostnet_050", 1045778), "repvit": ("repvit_m1", 4722948),
    "res2net": ("res2next50", 22642954), "resnest": ("resnest14d", 8583178), "resnet": ("test_resnet", 373658),
    "resnetv2": ("resnetv2_18", 11179850), "rexnet": ("rexnet_100", 3528683), "selecsls": ("selecsls42", 29086762),
    "senet": ("legacy_seresnet18", 11270722), "sequencer": ("sequencer2d_s", 27270538),
    "shvit": ("shvit_s1", 6013018), "sknet": ("skresnet18", 11450186), "starnet": ("starnet_s050", 415018),
    "swiftformer": ("swiftformer_xs", 3037780), "swin_transformer": ("swin_tiny_patch4_window7_224", 27527044),
    "swin_transformer_v2": ("swinv2_tiny_window8_256", 27585844),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224", 27570814), "tiny_vit": ("tiny_vit_5m_224", 5074974),
    "tnt": ("tnt_s_legacy_patch16_224", 23374186), "tresnet": ("tresnet_m", 29360522),
    "twins": ("twins_svt_small", 23552906), "vgg": ("vgg11", 128807306), "visformer": ("visformer_tiny", 9940218),
    "vision_transformer": ("test_vit", 306890), "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", 6146634),
    "vision_transformer_relpos": ("test_vit_relpos", 754117),
    "vision_transformer_sam": ("samvit_base_patch16_224", 85695754), "vitamin": ("vitamin_small_224", 21881546),
    "volo": ("volo_d1_224", 25869740), "vovnet": ("ese_vovnet19b_slim_dw", 1389882),
    "xception": ("legacy_xception", 20827442), "xception_aligned": ("xception41p", 24879242),
    "xcit": ("xcit_nano_12_p8_224", 2921306),
}


def _timm_build(name: str) -> Callable[[], Built]:
    def build() -> Built:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        c, h, w = cfg.get("input_size", (3, 224, 224))
        x = _image((h, w), channels=c)
        if not cfg.get("fixed_input_size", False) and _timm_is_convnet(model):
            # convnets run at smaller sizes (less CPU); keep the default size where the small one fails
            small = _image((min(h, 96), min(w, 96)), channels=c)
            try:
                with torch.no_grad():
                    model(small)
                x = small
            except Exception:  # e.g. blocked local attention needing a multiple of its block size
                pass
        return Built(model, (x,), _heads_by_width(model, NUM_CLASSES))

    return build


def _timm_is_convnet(model: nn.Module) -> bool:
    return not any(isinstance(m, (nn.MultiheadAttention,)) or "Attention" in type(m).__name__ or
                   "Block" in type(m).__name__ and hasattr(m, "attn") for m in model.modules())


TIMM_BIG = 40_000_000  # parameters: such models run last


def timm_cases() -> list[Case]:
    return [Case(f"timm:{model}", f"timm:{fam}", _timm_build(model), ("big",) if n > TIMM_BIG else ())
            for fam, (model, n) in sorted(TIMM_SMALLEST.items())]


def refresh_timm_smallest() -> dict[str, tuple[str, int]]:
    """Recompute :data:`TIMM_SMALLEST` by building every timm model on the meta device (minutes)."""
    import timm
    from timm.models import _registry

    best: dict[str, tuple[int, str]] = {}
    for name in timm.list_models():
        fam = _registry._model_to_module[name]
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
            n = sum(p.numel() for p in model.parameters())
        except Exception:  # a model that cannot be built is simply not a candidate
            continue
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    return {fam: (name, n) for fam, (n, name) in sorted(best.items())}


# ------------------------------------------------------------------ Hugging Face transformers
_VOCAB, _SEQ = 256, 16
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _ids(batch: int = 2, seq: int = _SEQ) -> torch.Tensor:
    return torch.randint(0, _VOCAB, (batch, seq))


def _hf(config_cls: str, model_cls: str, cfg: dict, inputs: Callable[[], dict], ignore: list[str],
        out_keys=("logits",)) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        config = getattr(transformers, config_cls)(**cfg)
        model = getattr(transformers, model_cls)(config).eval()
        return Built(model, inputs(), list(ignore), out_keys=tuple(out_keys))

    return build


def _decoder(kind: str, **extra) -> dict:
    return dict(vocab_size=_VOCAB, max_position_embeddings=64, use_cache=False, **_TINY, **extra)


def hf_cases() -> list[Case]:
    text = lambda: {"input_ids": _ids(), "attention_mask": torch.ones(2, _SEQ, dtype=torch.long)}  # noqa: E731
    causal = lambda: {"input_ids": _ids()}  # noqa: E731
    seq2seq = lambda: {"input_ids": _ids(), "decoder_input_ids": _ids(2, 8)}  # noqa: E731
    pixels = lambda s=32: (lambda: {"pixel_values": torch.randn(2, 3, s, s)})  # noqa: E731
    cls = dict(vocab_size=_VOCAB, max_position_embeddings=64, num_labels=NUM_CLASSES, **_TINY)
    gqa = dict(num_key_value_heads=2)
    entries = [
        ("bert", "BertConfig", "BertForSequenceClassification", cls, text, ["classifier"]),
        ("roberta", "RobertaConfig", "RobertaForSequenceClassification", {**cls, "max_position_embeddings": 72},
         text, ["classifier.out_proj"]),
        ("distilbert", "DistilBertConfig", "DistilBertForSequenceClassification",
         dict(vocab_size=_VOCAB, max_position_embeddings=64, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
              num_labels=NUM_CLASSES), text, ["classifier"]),
        ("albert", "AlbertConfig", "AlbertForSequenceClassification", {**cls, "embedding_size": 32}, text,
         ["classifier"]),
        ("gpt2", "GPT2Config", "GPT2LMHeadModel",
         dict(vocab_size=_VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=128, use_cache=False),
         causal, ["lm_head"]),
        ("opt", "OPTConfig", "OPTForCausalLM",
         dict(vocab_size=_VOCAB, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2,
              num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64, use_cache=False), causal, ["lm_head"]),
        ("llama", "LlamaConfig", "LlamaForCausalLM", _decoder("llama", **gqa), causal, ["lm_head"]),
        ("mistral", "MistralConfig", "MistralForCausalLM", _decoder("mistral", **gqa), causal, ["lm_head"]),
        ("qwen2", "Qwen2Config", "Qwen2ForCausalLM", _decoder("qwen2", **gqa), causal, ["lm_head"]),
        ("gemma", "GemmaConfig", "GemmaForCausalLM", _decoder("gemma", head_dim=16, **gqa), causal, ["lm_head"]),
        ("phi3", "Phi3Config", "Phi3ForCausalLM", _decoder("phi3", pad_token_id=0, **gqa), causal, ["lm_head"]),
        ("mixtral", "MixtralConfig", "MixtralForCausalLM",
         _decoder("mixtral", num_local_experts=4, num_experts_per_tok=2, **gqa), causal, ["lm_head"]),
        ("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
         _decoder("qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                  shared_expert_intermediate_size=128, **gqa), causal, ["lm_head"]),
        ("t5", "T5Config", "T5ForConditionalGeneration",
         dict(vocab_size=_VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, use_cache=False,
              decoder_start_token_id=0), seq2seq, ["lm_head"]),
        ("bart", "BartConfig", "BartForConditionalGeneration",
         dict(vocab_size=_VOCAB, max_position_embeddings=64, d_model=64, encoder_layers=2, decoder_layers=2,
              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
              use_cache=False), seq2seq, ["lm_head"]),
        ("vit", "ViTConfig", "ViTForImageClassification",
         dict(image_size=32, patch_size=8, num_labels=NUM_CLASSES, **_TINY), pixels(32), ["classifier"]),
        ("swin", "SwinConfig", "SwinForImageClassification",
         dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
              num_labels=NUM_CLASSES), pixels(32), ["classifier"]),
        ("convnext", "ConvNextConfig", "ConvNextForImageClassification",
         dict(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=NUM_CLASSES),
         pixels(32),
         ["classifier"]),
        ("segformer", "SegformerConfig", "SegformerForSemanticSegmentation",
         dict(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
              patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
              decoder_hidden_size=32, num_labels=NUM_CLASSES), pixels(64), ["decode_head.classifier"]),
    ]
    cases = [Case(f"hf:{n}", "hf", _hf(c, m, cfg, inp, ig)) for n, c, m, cfg, inp, ig in entries]

    def clip() -> Built:
        import transformers

        config = transformers.CLIPConfig(
            text_config=dict(vocab_size=_VOCAB, max_position_embeddings=64, **_TINY),
            vision_config=dict(image_size=32, patch_size=8, **_TINY), projection_dim=32)
        model = transformers.CLIPModel(config).eval()
        inputs = {"input_ids": _ids(), "pixel_values": torch.randn(2, 3, 32, 32)}
        return Built(model, inputs, ["text_projection", "visual_projection"],
                     out_keys=("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"))

    cases.append(Case("hf:clip", "hf", clip))
    return cases


# ------------------------------------------------------------------ YOLO (ultralytics, test-only dependency)
def _yolo(cfg: str) -> Callable[[], Built]:
    def build() -> Built:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics.nn.tasks import DetectionModel

        model = DetectionModel(cfg, nc=NUM_CLASSES, verbose=False).eval()
        head = model.model[-1]
        prefix = f"model.{len(model.model) - 1}"
        # the last conv of every box / class branch, and the fixed DFL conv, keep their outputs
        ignore = [f"{prefix}.{n}" for n, m in head.named_modules()
                  if isinstance(m, nn.Conv2d) and (re.fullmatch(r"(one2one_)?cv[23]\.\d+\.2", n) or "dfl" in n)]
        return Built(model, (_image(64),), ignore)

    return build


def yolo_cases() -> list[Case]:
    return [Case(f"yolo:{c.removesuffix('.yaml')}", "yolo", _yolo(c)) for c in ("yolov8n.yaml", "yolo11n.yaml")]


# ------------------------------------------------------------------ registry of all cases
def all_cases() -> list[Case]:
    return torchvision_cases() + hf_cases() + yolo_cases() + timm_cases()


def get(name: str) -> Case:
    """The case called ``name`` (``tv:resnet18``, ``hf:llama``...); for torchvision and timm names not in
    the default lists, a case is built on the fly."""
    prefix, _, rest = name.partition(":")
    if prefix == "tv":
        return Case(name, "torchvision-cls", _tv_cls(rest))
    if prefix == "timm" and rest not in {m for m, _ in TIMM_SMALLEST.values()}:
        return Case(name, "timm", _timm_build(rest))
    for case in all_cases():
        if case.name == name:
            return case
    raise KeyError(f"unknown zoo case {name!r}")


# ------------------------------------------------------------------ the pass criterion (shared with tests)
def flat_shapes(out: Any, keys: tuple[str, ...] | None = None, dynamic_dim0: bool = False) -> list:
    """Shapes of every tensor in a model output (tensors, tuples, lists, dicts, dataclasses, ModelOutputs)."""
    shapes: list = []

    def walk(o: Any, path: str) -> None:
        if isinstance(o, torch.Tensor):
            s = tuple(o.shape)
            shapes.append((path, s[1:] if dynamic_dim0 else s))
        elif isinstance(o, dict):
            for k, v in o.items():
                if keys is None or path or k in keys:
                    walk(v, f"{path}.{k}")
        elif isinstance(o, (list, tuple)) and not hasattr(o, "_fields"):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        elif dataclasses.is_dataclass(o):
            for f in dataclasses.fields(o):
                if keys is None or path or f.name in keys:
                    walk(getattr(o, f.name), f"{path}.{f.name}")

    walk(out, "")
    return shapes


def call(model: nn.Module, inputs: tuple | dict) -> Any:
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def n_params(model: nn.Module) -> int:
    # shared (tied) parameters count once, as parameters() yields each once
    return sum(p.numel() for p in model.parameters())


def _double(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_double(v) for v in x)
    return x


def masked_twin_check(built: Built) -> dict:
    """Prune ``built.model`` through an explicit plan and compare it, in float64, with its masked twin (the
    unpruned model with every removed slice zeroed). ``equivalent``: True/False where every removed group is
    exact (channels local: no mixing across channels other than through prunable layers), None where some
    group is approximate (a norm over channels, ...), with ``max_abs_diff`` of the outputs."""
    import copy

    import prunekit as pk
    from prunekit.testing import output_tensors, zero_removed_

    twin = copy.deepcopy(built.model)
    t0 = time.perf_counter()
    plan = pk.plan(built.model, built.inputs, sparsity=SPARSITY, ignore=list(built.ignore))
    report = pk.prune_(built.model, plan)
    seconds = time.perf_counter() - t0
    approximate = any(g.approximate for g in plan.groups if g.channels)
    zero_removed_(twin, plan)
    pruned = copy.deepcopy(built.model).double().eval()
    twin = twin.double().eval()
    x = _double(built.inputs)
    with torch.no_grad():
        a, b = output_tensors(call(twin, x)), output_tensors(call(pruned, x))
    diff = max((float((u - v).abs().max()) for u, v in zip(a, b) if u.shape == v.shape and u.is_floating_point()
                and u.numel()), default=0.0)
    scale = max(1.0, max((float(u.abs().max()) for u in a if u.is_floating_point() and u.numel()), default=1.0))
    # float64 rounding of a deep random network's large activations reaches ~1e-8 of the output; a wrong cut
    # changes outputs by the order of the outputs themselves
    same = len(a) == len(b) and all(u.shape == v.shape for u, v in zip(a, b)) and diff <= 1e-6 * scale
    return {"report": report, "equivalent": None if approximate else bool(same), "max_abs_diff": diff,
            "output_scale": scale, "prune_s": round(seconds, 3)}


def prune_with(tool: str, built: Built, equivalence: bool = False) -> dict:
    """Prune ``built.model`` in place at sparsity 0.5 with ``tool`` ("prunekit" or "torch-pruning");
    ``equivalence`` (prunekit): through :func:`masked_twin_check`, recording its verdict."""
    if tool == "prunekit":
        import prunekit as pk

        extra = {}
        if equivalence:
            check = masked_twin_check(built)
            report = check.pop("report")
            extra = check
        else:
            report = pk.prune_(built.model, example_inputs=built.inputs, sparsity=SPARSITY,
                               ignore=list(built.ignore))
        return {"report_params": [getattr(report, "params_before", None), getattr(report, "params_after", None)],
                "report_macs": [getattr(report, "macs_before", None), getattr(report, "macs_after", None)],
                "skipped": str(getattr(report, "skipped", ""))[:500], "trace": getattr(report, "trace", None),
                "validation": getattr(report, "validation", None), **extra}
    if tool == "torch-pruning":
        import torch_pruning as tp

        modules = dict(built.model.named_modules())
        ignored = [modules[n] for n in built.ignore]
        pruner = tp.pruner.MetaPruner(built.model, example_inputs=built.inputs,
                                      importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=SPARSITY, ignored_layers=ignored)
        pruner.step()
        return {}
    raise ValueError(f"tool={tool!r}: expected 'prunekit' or 'torch-pruning'")


def run_case(case: Case, tool: str, seed: int = 0, equivalence: bool = False) -> dict:
    """Build ``case``, prune it with ``tool`` and check the pass criterion: pruning succeeds, the pruned
    model runs, output shapes are unchanged and the parameter count drops by at least 20%."""
    torch.manual_seed(seed)
    rec: dict[str, Any] = {"model": case.name, "family": case.family, "tool": tool}
    t0 = time.perf_counter()
    stage = "build"
    try:
        built = case.build()
        rec["ignore"] = list(built.ignore)
        stage = "forward-before"
        before = flat_shapes(call(built.model, built.inputs), built.out_keys, built.dynamic_dim0)
        p0 = n_params(built.model)
        stage = "prune"
        t1 = time.perf_counter()
        res = prune_with(tool, built, equivalence)
        rec["prune_s"] = res.pop("prune_s", round(time.perf_counter() - t1, 3))  # the pruning call alone
        rec.update(res)
        p1 = n_params(built.model)
        rec.update(params_before=p0, params_after=p1, param_drop=round(1 - p1 / p0, 4) if p0 else 0.0)
        stage = "forward-after"
        after = flat_shapes(call(built.model, built.inputs), built.out_keys, built.dynamic_dim0)
        stage = "check"
        if after != before:
            diff = [(a, b) for a, b in zip(before, after) if a != b][:3]
            raise AssertionError(f"output shapes changed: {diff or (len(before), len(after))}")
        if rec["param_drop"] < MIN_PARAM_DROP:
            raise AssertionError(f"params dropped only {rec['param_drop']:.1%} (< {MIN_PARAM_DROP:.0%})")
        rec["status"] = "pass"
    except Exception as e:  # the harness records every failure, whatever its type
        rec["status"] = "fail"
        rec["stage"] = stage
        rec["error_type"] = type(e).__name__
        rec["error"] = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        for attr in ("fqn", "op"):
            if getattr(e, attr, None) is not None:
                rec[attr] = str(getattr(e, attr))
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    gc.collect()
    return rec


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="list the zoo, or recompute the smallest timm model per family")
    ap.add_argument("--refresh-timm", action="store_true")
    args = ap.parse_args()
    if args.refresh_timm:
        print(json.dumps(refresh_timm_smallest(), indent=1))
    else:
        for c in all_cases():
            print(f"{c.name}\t{c.family}")
