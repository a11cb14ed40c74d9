"""What ``model.quantizer`` chooses: the tokenizer's quantizer, and with it the model type."""

from __future__ import annotations

from mvq.configuration.sections import LISTED_TYPES, MODEL_TYPES, QUANTIZER_TYPES, ModelConfig
from mvq.errors import MvqError
from mvq.quantize.registry import FAMILIES


def quantizer_picks_type(data: dict, overrides: list[str]) -> dict:
    """``model.quantizer`` names the tokenizer's quantizer (`mvq quantizers`), and the type
    follows it where the type was not given beside it: a two-level name (hierarchical, mvq)
    becomes its model type (the GAN one where the config's type trains with the VQGAN loss)
    and leaves ``model.quantizer`` at its default; a family given as an override on a
    two-level preset moves the model to the one-level backbone. A type given as an override
    that disagrees is refused, naming both."""
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("quantizer"), str):
        return data
    name, given = model["quantizer"], {item.split("=", 1)[0].strip() for item in overrides}
    current = model.get("type", ModelConfig.type)
    record = MODEL_TYPES.get(current) if isinstance(current, str) else None
    if name not in FAMILIES and name not in LISTED_TYPES:
        raise MvqError(f"model.quantizer must be one of {', '.join([*FAMILIES, *LISTED_TYPES])} "
                       f"(`mvq quantizers`), got {name!r:.80}")
    if name in LISTED_TYPES:
        records = LISTED_TYPES[name]
        if record is not None and record not in records and record.section is not \
                records[0].section:
            raise MvqError(f"model.quantizer={name} is model.type="
                           f"{' or '.join(r.name for r in records)}, whose model section is not "
                           f"this config's (model.type={current}): start from a preset of "
                           f"that type (`mvq presets`)")
        if record not in records:
            if "model.type" in given or "model.quantizer" not in given:
                raise MvqError(f"model.quantizer={name} is model.type="
                               f"{' or '.join(r.name for r in records)}, but model.type="
                               f"{current!r:.40} is set too: drop one of them")
            gan = bool(record and record.gan)
            record = next((r for r in records if r.gan == gan), records[0])
        model["type"] = record.name
        del model["quantizer"]  # the two-level types build their own quantizers
    elif (record is not None and not record.quantizer and "model.quantizer" in given
          and "model.type" not in given):
        if record.gan or record.section is not ModelConfig:
            others = (f", or choose model.quantizer={' or '.join(LISTED_TYPES)}"
                      if record.section is ModelConfig else "")
            raise MvqError(f"model.quantizer={name} drops into the one-level VQ-VAE backbone "
                           f"(model.type={' or '.join(QUANTIZER_TYPES)}), which has neither the "
                           f"VQGAN loss nor the networks of this config's model.type={current}: "
                           "start from a preset of the VQ-VAE networks (e.g. "
                           f"fmnist_f28_k16_quick, whose model.type is mvqvae){others}")
        model["type"] = QUANTIZER_TYPES[0]
    return data
