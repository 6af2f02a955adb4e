"""Hugging Face integration: `import svdzip` registers quant_method "svdzip", so that
`AutoModelForCausalLM.from_pretrained(svdzip_dir)` builds LowRankLinear on the meta skeleton and
loads the factors, and `save_pretrained` of such a model writes a directory that loads the same way.

Never random weights: an svdzip directory's config.json says `"model_type": "svdzip"` (the real
one is in `quantization_config.base_model_type`). Without svdzip imported, transformers stops
with "model type `svdzip` ... does not recognize this architecture"; an unknown quant_method
alone would only be warned about, and the missing dense weights filled with random values.
With svdzip imported, AutoConfig maps "svdzip" to the base model's own config class (no model
code is copied or wrapped), and the quantizer below puts LowRankLinear where the rank map says.
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .dtypes import model_dtype
from .meta import FORMAT_VERSION, MODEL_TYPE, check_rank_map, verify_dir, write_meta
from .pipeline.outdir import check_output, replace_dir, staging_dir


def rank_map(model: nn.Module) -> dict[str, dict]:
    from .nn import COMPRESSED, spec_of

    return {name: spec_of(m) for name, m in model.named_modules() if isinstance(m, COMPRESSED)}


def swap_in_lowrank(model: nn.Module, modules: dict, where, dtype=None) -> None:
    """Put a meta compressed layer (LowRankLinear, QuantLowRankLinear) in place of each Linear
    the rank map names (dtype: the Linear's)."""
    from .nn import build

    named = dict(model.named_modules())
    for name, spec in modules.items():
        parent_name, _, attr = name.rpartition(".")
        parent = named.get(parent_name)
        old = getattr(parent, attr, None) if parent is not None else None
        if not isinstance(old, nn.Linear):
            raise ValueError(f"{where}: module {name} is not a Linear in {type(model).__name__}")
        if (old.in_features, old.out_features) != (spec["in_features"], spec["out_features"]):
            raise ValueError(f"{where}: module {name} is {old.out_features}x{old.in_features} in the "
                             f"model but {spec['out_features']}x{spec['in_features']} in the rank map")
        setattr(parent, attr, build(spec, dtype or old.weight.dtype, "meta"))


def check_checkpoint(model: nn.Module, ckpt, where, tied=()) -> None:
    """The checkpoint holds exactly the model's tensors (tied ones once; `tied`: names that
    will be tied to another after loading): else a ValueError naming what is missing or
    unexpected, before anything is loaded (never a random init)."""
    state = model.state_dict(keep_vars=True)
    stored = {id(t) for n, t in state.items() if n in ckpt}
    unexpected = sorted(set(ckpt.files) - set(state))
    missing = sorted(n for n, t in state.items() if id(t) not in stored and n not in tied)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the rank map: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def check_loaded(model: nn.Module, where) -> None:
    """Every factor, code and scale is real and finite after loading."""
    from .dtypes import all_finite
    from .nn import COMPRESSED

    for name, m in model.named_modules():
        if isinstance(m, COMPRESSED):
            for pname, p in [*m.named_parameters(), *m.named_buffers()]:
                if p.is_meta or not all_finite(p):
                    raise ValueError(f"{where}: {name}.{pname} was not loaded or is not finite")


def base_model_type(config) -> str:
    """The architecture's model_type, also under the subclass that writes model_type "svdzip"."""
    return getattr(type(config), "base_model_type", None) or config.model_type


def hf_config_dict(config, modules: dict) -> dict:
    """config.json of an svdzip directory: the model's config, model_type "svdzip", and the
    quantization_config that rebuilds it."""
    d = config.to_dict()
    d["quantization_config"] = {"quant_method": MODEL_TYPE, "format_version": FORMAT_VERSION,
                                "base_model_type": base_model_type(config), "modules": modules}
    d["model_type"] = MODEL_TYPE
    return d


def write_hf_config(config, directory, modules: dict) -> None:
    (Path(directory) / "config.json").write_text(json.dumps(hf_config_dict(config, modules), indent=2,
                                                            sort_keys=True) + "\n")


def mark_compressed(model: nn.Module) -> None:
    """Make `model.save_pretrained(dir)` write an svdzip directory (model_type "svdzip" and the
    quantization_config in config.json): the config's class becomes a subclass of its own that
    changes only what it writes."""
    modules = rank_map(model)
    if not modules:
        return
    config = _writes_svdzip(model.config)
    config.quantization_config = SvdzipQuantizationConfig(modules=modules,
                                                          base_model_type=type(config).base_model_type)
    guard_save_pretrained(model)


def input_dirs(model: nn.Module) -> list[str]:
    """The directory the model was read from, if any: an output must never go into or over it."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return [name] if name and Path(name).is_dir() else []


def _save_pretrained(model, save_directory, *args, overwrite: bool = False, **kwargs):
    """transformers' save_pretrained under svdzip's output rules (pipeline/outdir.py): never
    into or over the model's own directory, an existing non-empty directory only with
    overwrite=True, built beside it and renamed into place, svdzip_config.json (with the
    tensor files' checksums) written last."""
    out = check_output(save_directory, input_dirs(model), overwrite, flag="overwrite=True")
    tmp = staging_dir(out)
    try:
        type(model).save_pretrained(model, tmp, *args, **kwargs)
        write_meta(tmp, type(model).__name__, model_dtype(model))
        replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def guard_save_pretrained(model: nn.Module) -> None:
    """model.save_pretrained(dir, overwrite=False, ...) follows svdzip's output rules."""
    if "save_pretrained" not in model.__dict__:
        model.save_pretrained = types.MethodType(_save_pretrained, model)


_WRITING: dict[type, type] = {}


def _writes_svdzip(config):
    """`config`, its class swapped (once) for the subclass that writes model_type "svdzip"."""
    if getattr(type(config), "base_model_type", None) is None:
        config.__class__ = _writing_class(type(config))
    return config


def _writing_class(base: type) -> type:
    """base's subclass whose to_dict says model_type "svdzip" (model_type, for the code that
    reads it at run time, stays the base's)."""
    if base not in _WRITING:
        def to_dict(self):
            d = base.to_dict(self)
            d["model_type"] = MODEL_TYPE
            return d
        _WRITING[base] = type(base.__name__, (base,), {"to_dict": to_dict, "base_model_type": base.model_type,
                                                       "__module__": base.__module__})
    return _WRITING[base]


class SvdzipConfig(PretrainedConfig):
    """Stands for model_type "svdzip" in AutoConfig: reading one gives the base model's own
    config class (quantization_config.base_model_type), quantization_config included."""
    model_type = MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        q = config_dict.get("quantization_config") or {}
        base = q.get("base_model_type")
        if q.get("quant_method") != MODEL_TYPE or base not in CONFIG_MAPPING:
            raise ValueError(f"config.json says model_type 'svdzip' but its quantization_config "
                             f"{ {k: v for k, v in q.items() if k != 'modules'} } names no known base model type")
        return CONFIG_MAPPING[base].from_dict({**config_dict, "model_type": base}, **kwargs)


class SvdzipQuantizationConfig(QuantizationConfigMixin):
    def __init__(self, modules=None, base_model_type=None, format_version=FORMAT_VERSION, **kwargs):
        self.quant_method = MODEL_TYPE
        self.format_version = format_version
        self.base_model_type = base_model_type
        self.modules = modules or {}
        if format_version != FORMAT_VERSION:
            raise ValueError(f"svdzip quantization_config format_version {format_version!r} is not "
                             f"supported (this svdzip reads {FORMAT_VERSION})")
        check_rank_map(self.modules, "quantization_config")


class SvdzipHfQuantizer(HfQuantizer):
    """Loads svdzip factors: LowRankLinear on the meta skeleton before the weights arrive."""
    requires_calibration = True  # an svdzip directory is made by svdzip.compress, not here

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        from .pipeline.checkpoint import Checkpoint

        swap_in_lowrank(model, self.quantization_config.modules, "quantization_config")
        if checkpoint_files:
            where = Path(checkpoint_files[0]).parent
            verify_dir(where)  # before a byte of a tensor is read
            check_checkpoint(model, Checkpoint(where), where, getattr(model, "all_tied_weights_keys", {}))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_loaded(model, getattr(model.config, "_name_or_path", "") or type(model).__name__)
        _writes_svdzip(model.config)
        guard_save_pretrained(model)
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self):
        return True

    @property
    def is_compileable(self):
        return True


AutoConfig.register(MODEL_TYPE, SvdzipConfig, exist_ok=True)
register_quantization_config(MODEL_TYPE)(SvdzipQuantizationConfig)
register_quantizer(MODEL_TYPE)(SvdzipHfQuantizer)
